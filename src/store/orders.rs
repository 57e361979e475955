//! Orders.

use super::{RowExt, Store, StoreError, parse_stored};
use crate::domain::{CartId, Currency, Order, OrderId, OrderLine, OrderStatus, Sku, UserId};

const SELECT_ORDER: &str = "SELECT o.id, o.user_id, o.cart_id, o.transaction_id, o.total_cents, o.currency, \
     o.created_at_ms, i.sku, i.quantity, i.price_cents \
     FROM orders o LEFT JOIN order_items i ON i.order_id = o.id \
     WHERE o.id = $1 ORDER BY i.line_no";

fn order_from_rows<R: RowExt>(rows: &[R]) -> Result<Option<Order>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(sku) = row.opt_text("sku")? {
            items.push(OrderLine {
                sku: parse_stored("sku", &sku, Sku::parse)?,
                quantity: row.int("quantity")?,
                price_cents: row.int("price_cents")?,
            });
        }
    }
    Ok(Some(Order {
        id: parse_stored("order id", &first.text("id")?, OrderId::parse)?,
        user_id: parse_stored("user id", &first.text("user_id")?, UserId::parse)?,
        cart_id: parse_stored("cart id", &first.text("cart_id")?, CartId::parse)?,
        status: OrderStatus::Confirmed,
        transaction_id: first.opt_text("transaction_id")?,
        total_cents: first.int("total_cents")?,
        currency: parse_stored("currency", &first.text("currency")?, Currency::parse)?,
        items,
        created_at_ms: first.int("created_at_ms")?,
    }))
}

impl Store {
    /// An order with its lines.
    pub async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        with_read!(self, |conn| {
            let rows = sqlx::query(SELECT_ORDER)
                .bind(id.as_str())
                .fetch_all(&mut *conn)
                .await?;
            order_from_rows(&rows)
        })
    }
}
