//! A checkout attempt: the durable record that makes a checkout resumable. Each step
//! is written down before it is taken, so a crash at any point leaves enough behind
//! for the reconciler to finish or undo it.

use std::fmt;

use super::{AttemptId, CartId, Currency, OrderId, UserId};

/// The step an attempt has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// Reserving stock. Nothing has been charged.
    Reserving,
    /// Stock is reserved and the card may have been charged: the outcome is only
    /// known once the gateway has answered, or been asked by idempotency key.
    Charging,
    /// The order exists. Terminal.
    Completed,
    /// Abandoned without an order; the cart is open again. Terminal.
    Failed,
}

impl AttemptState {
    /// The state as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Reserving => "RESERVING",
            AttemptState::Charging => "CHARGING",
            AttemptState::Completed => "COMPLETED",
            AttemptState::Failed => "FAILED",
        }
    }

    /// Reads a stored state.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "RESERVING" => Some(AttemptState::Reserving),
            "CHARGING" => Some(AttemptState::Charging),
            "COMPLETED" => Some(AttemptState::Completed),
            "FAILED" => Some(AttemptState::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call the inventory service still owes this attempt, retried until it succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryAction {
    /// Make the reservation permanent (the order exists).
    Commit,
    /// Give the reserved stock back (there will be no order).
    Release,
}

impl InventoryAction {
    /// The action as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            InventoryAction::Commit => "COMMIT",
            InventoryAction::Release => "RELEASE",
        }
    }

    /// Reads a stored action.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "COMMIT" => Some(InventoryAction::Commit),
            "RELEASE" => Some(InventoryAction::Release),
            _ => None,
        }
    }
}

/// One try at checking a cart out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Identifier; also the reservation ID and the gateway's idempotency key.
    pub id: AttemptId,
    /// The cart being checked out.
    pub cart_id: CartId,
    /// Its owner.
    pub user_id: UserId,
    /// Step reached.
    pub state: AttemptState,
    /// Amount to charge, fixed when the attempt began.
    pub amount_cents: i64,
    /// Currency to charge in.
    pub currency: Currency,
    /// The gateway's charge, once known.
    pub transaction_id: Option<String>,
    /// The order, once completed.
    pub order_id: Option<OrderId>,
    /// An inventory call still owed.
    pub inventory_pending: Option<InventoryAction>,
    /// Until when a failed attempt whose charge outcome was uncertain is checked for
    /// a charge that landed late (which is then refunded).
    pub recheck_until_ms: Option<i64>,
    /// The payment provider's reference of the payment (a PaymentIntent's ID), once
    /// recorded: the payment is confirmed only after it is.
    pub payment_ref: Option<String>,
    /// Until when the payment may wait for the buyer (3-D Secure).
    pub action_until_ms: Option<i64>,
    /// How many times the reconciler has had to come back to it.
    pub retries: i64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}
