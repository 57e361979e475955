//! Confirmed orders.

use super::{CartId, Currency, OrderId, Sku, UserId};

/// An order's state. Orders exist only once paid, so there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Paid and recorded.
    Confirmed,
}

impl OrderStatus {
    /// `CONFIRMED`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Confirmed => "CONFIRMED",
        }
    }
}

/// One SKU of an order, copied from the cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    /// The product.
    pub sku: Sku,
    /// Units bought.
    pub quantity: i64,
    /// Unit price paid.
    pub price_cents: i64,
}

/// A confirmed order: the cart's items, paid by `transaction_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Identifier.
    pub id: OrderId,
    /// Buyer.
    pub user_id: UserId,
    /// The cart it was made from.
    pub cart_id: CartId,
    /// State.
    pub status: OrderStatus,
    /// The payment provider's charge; none for an order whose total is 0.
    pub transaction_id: Option<String>,
    /// Amount charged.
    pub total_cents: i64,
    /// Currency charged.
    pub currency: Currency,
    /// What was bought.
    pub items: Vec<OrderLine>,
    /// When it was confirmed, in Unix milliseconds.
    pub created_at_ms: i64,
}
