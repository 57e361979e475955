//! The reconciler: a background task in every `serve` and `demo` process that
//! finishes or undoes what requests left behind, so a crash, a timeout or a lost
//! answer never leaves a card charged without an order or a cart stuck.
//!
//! Each sweep picks attempts whose lease has run out and that have work left, takes
//! each over with a compare-and-set on its lease (so any number of instances can
//! sweep the same database at once; each attempt is settled by one of them), and:
//!
//! - `RESERVING`: nothing was charged; releases the stock and reopens the cart;
//! - `CHARGING`: asks the gateway by idempotency key; a successful charge becomes
//!   the order, anything else reopens the cart (and the gateway is asked again for
//!   a while, in case a charge lands late, which is then refunded);
//! - finished attempts: repeats inventory calls still owed (commit or release).
//!
//! Every action is logged (`event:"reconciled"`). Failures are retried with backoff.

use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;

use super::checkout::{RECHECK_WINDOW, payment_of};
use super::{Checkout, ms};
use crate::domain::{Attempt, AttemptState, InventoryAction, Money, OrderId};
use crate::store::attempts::Lease;
use crate::upstream::payment::Found;

/// How often a payment the provider has not decided (waiting for the buyer) is
/// looked at again.
const PENDING_RECHECK_MS: i64 = 30_000;

/// Most attempts settled per sweep.
const BATCH: i64 = 50;

/// How long idempotency keys are kept for replays.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Attempts this process took over.
    pub taken: usize,
    /// Of those, how many could not be settled yet and were handed back for later.
    pub deferred: usize,
    /// Whether a whole batch was due, so that more may be waiting.
    pub full: bool,
}

impl Swept {
    /// Whether to sweep again without waiting for the period: a whole batch was due
    /// and every attempt in it was settled. A burst leaves stock commits owed beyond
    /// the [`super::SETTLING_AT_ONCE`] made after answering, and a batch a
    /// period would take minutes over them; this drains them as fast as the calls
    /// go, one at a time. A deferral means a dependency is failing, and the sweeps
    /// go back to the period and the attempts to their backoff.
    pub fn again_at_once(&self) -> bool {
        self.full && self.taken > 0 && self.deferred == 0
    }
}

/// What a payment provider's event led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// No attempt has this payment (another shop's, or long gone).
    Unknown,
    /// The attempt was settled before.
    AlreadySettled,
    /// A request holds the attempt and settles it itself.
    Busy,
    /// Settled now.
    Done(Action),
}

/// What settling an attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The charge had gone through: the order now exists.
    Completed(OrderId),
    /// Nothing was charged: the stock is released and the cart open again.
    Reopened,
    /// A charge that landed after its attempt was given up was refunded.
    Refunded(String),
    /// Inventory calls still owed were made.
    InventorySettled,
    /// The gateway was asked for a late charge and had none; it will be asked again.
    Rechecked,
    /// Nothing left to do (another actor finished it first).
    Nothing,
}

impl Action {
    fn label(&self) -> &'static str {
        match self {
            Action::Completed(_) => "completed",
            Action::Reopened => "reopened",
            Action::Refunded(_) => "refunded",
            Action::InventorySettled => "inventory_settled",
            Action::Rechecked => "rechecked",
            Action::Nothing => "nothing",
        }
    }
}

impl Checkout {
    /// Sweeps every `reconcile_interval` until `stop` turns true.
    pub async fn reconcile(&self, mut stop: watch::Receiver<bool>) {
        let app = self;
        let mut purged_at: Option<tokio::time::Instant> = None;
        loop {
            let again = match app.sweep().await {
                Ok(swept) => swept.again_at_once(),
                Err(error) => {
                    tracing::warn!(
                        event = "reconcile_failed",
                        error = %format!("{error:#}"),
                        "the reconciler's sweep failed; it will try again"
                    );
                    false
                }
            };
            if purged_at.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
                match app
                    .store
                    .purge_idempotency_keys(app.now_ms() - ms(IDEMPOTENCY_RETENTION))
                    .await
                {
                    Ok(purged) => {
                        purged_at = Some(tokio::time::Instant::now());
                        if purged > 0 {
                            tracing::info!(
                                event = "idempotency_keys_purged",
                                count = purged,
                                "old idempotency keys removed"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(event = "reconcile_failed", error = %error, "could not purge idempotency keys")
                    }
                }
            }
            if again {
                if *stop.borrow() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(app.timing.reconcile_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// How long the reconciler may hold an attempt: enough for every call it makes.
    fn lease_length(&self) -> Duration {
        let timing = &self.timing;
        timing.payment_timeout + timing.inventory_timeout * 2 + timing.db_call * 3 + Duration::from_secs(5)
    }

    /// How long an attempt is left alone after anyone last touched it, so a gateway
    /// still working on a timed-out charge has answered before it is asked about it.
    fn settle_delay(&self) -> Duration {
        self.timing.payment_timeout + Duration::from_secs(1)
    }

    /// One pass: settles every due attempt of one batch that this process manages to
    /// take over.
    pub async fn sweep(&self) -> anyhow::Result<Swept> {
        let app = self;
        let now = app.now_ms();
        let due = app.store.due_attempts(now, now - ms(app.settle_delay()), BATCH).await?;
        let mut swept = Swept {
            full: i64::try_from(due.len()).is_ok_and(|n| n >= BATCH),
            ..Swept::default()
        };
        for id in due {
            let lease = Lease {
                owner: format!("{}/reconciler", app.instance),
                until_ms: app.now_ms() + ms(app.lease_length()),
            };
            let Some(attempt) = app.store.claim_attempt(&id, &lease, app.now_ms()).await? else {
                continue;
            };
            let span = tracing::info_span!(
                "reconcile",
                attemptId = attempt.id.as_str(),
                cartId = attempt.cart_id.as_str(),
                userId = attempt.user_id.as_str(),
            );
            swept.taken += 1;
            if !app.settle(&attempt, &lease.owner).instrument(span).await {
                swept.deferred += 1;
            }
        }
        Ok(swept)
    }

    /// Settles one attempt taken over; false if it was handed back to be tried later.
    async fn settle(&self, attempt: &Attempt, owner: &str) -> bool {
        let app = self;
        let result = match attempt.state {
            AttemptState::Reserving => app.reopen(attempt, owner, "ABANDONED_BEFORE_CHARGE", None).await,
            AttemptState::Charging => app.settle_charge(attempt, owner).await,
            AttemptState::Completed | AttemptState::Failed => app.settle_leftovers(attempt, owner).await,
        };
        match result {
            Ok(action) => {
                app.metrics
                    .reconciler_actions
                    .with_label_values(&[action.label()])
                    .inc();
                let order_id = match &action {
                    Action::Completed(order) => Some(order.as_str().to_string()),
                    _ => None,
                };
                match action {
                    Action::Rechecked | Action::Nothing => tracing::debug!(
                        event = "reconciled",
                        action = action.label(),
                        state = attempt.state.as_str(),
                        "nothing to settle yet"
                    ),
                    Action::Refunded(charge) => tracing::warn!(
                        event = "reconciled",
                        action = "refunded",
                        state = attempt.state.as_str(),
                        transactionId = charge.as_str(),
                        amountCents = attempt.amount_cents,
                        "refunded a charge that landed after its checkout was given up"
                    ),
                    action => tracing::info!(
                        event = "reconciled",
                        action = action.label(),
                        state = attempt.state.as_str(),
                        orderId = order_id,
                        retries = attempt.retries,
                        "settled an unfinished checkout attempt"
                    ),
                }
                true
            }
            Err(error) => {
                let backoff = Duration::from_secs(1u64 << attempt.retries.clamp(0, 4) as u32);
                if let Err(store) = app
                    .store
                    .release_lease(&attempt.id, owner, app.now_ms() + ms(backoff), app.now_ms())
                    .await
                {
                    tracing::debug!(error = %store, "could not hand the attempt back; its lease will run out");
                }
                app.metrics.reconciler_actions.with_label_values(&["deferred"]).inc();
                tracing::warn!(
                    event = "reconcile_deferred",
                    state = attempt.state.as_str(),
                    error = %format!("{error:#}"),
                    retryInMs = ms(backoff),
                    "could not settle the attempt yet; will try again"
                );
                false
            }
        }
    }

    async fn reopen(
        &self,
        attempt: &Attempt,
        owner: &str,
        reason: &str,
        recheck_until_ms: Option<i64>,
    ) -> anyhow::Result<Action> {
        if self.give_back(attempt, owner, reason, true, recheck_until_ms).await? {
            Ok(Action::Reopened)
        } else {
            Ok(Action::Nothing)
        }
    }

    async fn settle_charge(&self, attempt: &Attempt, owner: &str) -> anyhow::Result<Action> {
        let app = self;
        let amount = Money {
            cents: attempt.amount_cents,
            currency: attempt.currency,
        };
        if amount.cents == 0 {
            // Nothing to charge: the order stands without a payment.
            return app.complete_paid(attempt, owner, None).await;
        }
        let payment = payment_of(attempt);
        match app.payment.lookup(&payment).await? {
            Found::Paid(paid) if paid.amount == amount => app.complete_paid(attempt, owner, Some(&paid.id)).await,
            Found::Paid(paid) => {
                // Another amount than the order's: never an order; give it back.
                app.payment.refund(&paid.id).await?;
                super::log_amount_mismatch(&paid, amount, "it was refunded");
                app.reopen(attempt, owner, "PAYMENT_AMOUNT_MISMATCH", None).await?;
                Ok(Action::Refunded(paid.id))
            }
            Found::Pending => {
                let now = app.now_ms();
                match attempt.action_until_ms {
                    // The buyer never acted in time: cancel, then settle what stands.
                    Some(until) if now > until => {
                        app.payment.cancel(&payment).await?;
                        match app.payment.lookup(&payment).await? {
                            Found::Paid(paid) if paid.amount == amount => {
                                app.complete_paid(attempt, owner, Some(&paid.id)).await
                            }
                            Found::Pending => anyhow::bail!("the payment is still undecided after it was cancelled"),
                            _ => app.reopen(attempt, owner, "ACTION_TIMED_OUT", None).await,
                        }
                    }
                    // Undecided: look again later, and at the deadline at the latest.
                    deadline => {
                        let again = (now + PENDING_RECHECK_MS).min(deadline.map_or(i64::MAX, |d| d + 1));
                        app.store.release_lease(&attempt.id, owner, again, now).await?;
                        Ok(Action::Rechecked)
                    }
                }
            }
            // Nothing taken: no order can come of it. A charge that lands late is
            // looked for a while, and refunded.
            Found::NotPaid => {
                let recheck_until = app.now_ms() + ms(RECHECK_WINDOW);
                app.reopen(attempt, owner, "NOT_CHARGED", Some(recheck_until)).await
            }
        }
    }

    /// Settles the attempt whose payment the provider knows as `reference`, as an
    /// event about that payment asks. The event's own word is not taken: the
    /// payment is read afresh, so events applied twice, or out of order, settle
    /// the same way.
    pub async fn settle_payment(&self, reference: &str) -> anyhow::Result<Settled> {
        let Some(attempt) = self.store.attempt_by_payment_ref(reference).await? else {
            return Ok(Settled::Unknown);
        };
        if attempt.state != AttemptState::Charging {
            return Ok(Settled::AlreadySettled);
        }
        let lease = Lease {
            owner: format!("{}/event", self.instance),
            until_ms: self.now_ms() + ms(self.lease_length()),
        };
        let Some(attempt) = self.store.claim_attempt(&attempt.id, &lease, self.now_ms()).await? else {
            // A request holds it and reads the payment itself; the reconciler follows.
            return Ok(Settled::Busy);
        };
        let span = tracing::info_span!(
            "reconcile",
            attemptId = attempt.id.as_str(),
            cartId = attempt.cart_id.as_str(),
            userId = attempt.user_id.as_str(),
        );
        let settled = self.settle_charge(&attempt, &lease.owner).instrument(span).await;
        match settled {
            Ok(action) => {
                tracing::info!(
                    event = "reconciled",
                    action = action.label(),
                    attemptId = attempt.id.as_str(),
                    trigger = "payment_event",
                    "settled a checkout attempt on the payment provider's event"
                );
                Ok(Settled::Done(action))
            }
            Err(error) => {
                let now = self.now_ms();
                let _ = self.store.release_lease(&attempt.id, &lease.owner, now, now).await;
                Err(error)
            }
        }
    }

    /// Completes a paid attempt's order, then commits its stock.
    async fn complete_paid(
        &self,
        attempt: &Attempt,
        owner: &str,
        transaction_id: Option<&str>,
    ) -> anyhow::Result<Action> {
        let order_id = OrderId::for_attempt(&attempt.id);
        if !self
            .store
            .complete_attempt(attempt, owner, &order_id, transaction_id, self.now_ms())
            .await?
        {
            return Ok(Action::Nothing);
        }
        self.settle_inventory(attempt, InventoryAction::Commit).await;
        Ok(Action::Completed(order_id))
    }

    async fn settle_leftovers(&self, attempt: &Attempt, owner: &str) -> anyhow::Result<Action> {
        let app = self;
        let mut action = Action::Nothing;
        if let Some(owed) = attempt.inventory_pending {
            if !app.settle_inventory(attempt, owed).await {
                anyhow::bail!("the inventory call {} still fails", owed.as_str());
            }
            action = Action::InventorySettled;
        }
        if attempt.state == AttemptState::Failed
            && let Some(until) = attempt.recheck_until_ms
        {
            if app.now_ms() > until {
                app.store.end_recheck(&attempt.id, app.now_ms()).await?;
                return Ok(action);
            }
            match app.payment.lookup(&payment_of(attempt)).await? {
                Found::Paid(charge) => {
                    app.payment.refund(&charge.id).await?;
                    app.store.end_recheck(&attempt.id, app.now_ms()).await?;
                    return Ok(Action::Refunded(charge.id));
                }
                _ => {
                    app.store
                        .release_lease(
                            &attempt.id,
                            owner,
                            app.now_ms() + ms(app.timing.recheck_interval),
                            app.now_ms(),
                        )
                        .await?;
                    if action == Action::Nothing {
                        action = Action::Rechecked;
                    }
                }
            }
        }
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_batch_settled_is_swept_again_at_once() {
        let whole = Swept {
            taken: 50,
            deferred: 0,
            full: true,
        };
        assert!(whole.again_at_once(), "a backlog drains without waiting");
        assert!(!Swept { full: false, ..whole }.again_at_once(), "nothing more is due");
        assert!(
            !Swept { deferred: 1, ..whole }.again_at_once(),
            "a failing dependency waits the period"
        );
        assert!(
            !Swept { taken: 0, ..whole }.again_at_once(),
            "another instance took the batch"
        );
    }
}
