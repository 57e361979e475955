//! Carts and their lines.

use super::{RowExt, Store, StoreError, parse_stored};
use crate::domain::cart::AddItemError;
use crate::domain::{Cart, CartId, CartLine, CartStatus, Currency, OrderId, Product, Quantity, Sku, UserId};

/// A cart and its lines, in one round trip.
pub(crate) const SELECT_CART: &str = "SELECT c.id, c.user_id, c.status, c.currency, c.order_id, \
     i.sku, i.quantity, i.price_cents \
     FROM carts c LEFT JOIN cart_items i ON i.cart_id = c.id \
     WHERE c.id = $1 ORDER BY i.line_no";

/// In a write transaction `$tx`: touches cart `$id` if it is open, which locks its
/// row so that a concurrent checkout waits for this change or makes it fail, then
/// loads it. `(cart, open)`; the cart is `None` when there is no such cart. A macro
/// because each database's transaction is a type of its own.
macro_rules! lock_cart {
    ($tx:ident, $id:expr, $now_ms:expr) => {{
        let locked = sqlx::query("UPDATE carts SET updated_at_ms = $2 WHERE id = $1 AND status = 'OPEN'")
            .bind($id.as_str())
            .bind($now_ms)
            .execute(&mut *$tx)
            .await
            .map_err(StoreError::from)?
            .rows_affected();
        let rows = sqlx::query(SELECT_CART)
            .bind($id.as_str())
            .fetch_all(&mut *$tx)
            .await
            .map_err(StoreError::from)?;
        (cart_from_rows(&rows)?, locked == 1)
    }};
}

/// Builds a cart from the rows of [`SELECT_CART`].
pub(crate) fn cart_from_rows<R: RowExt>(rows: &[R]) -> Result<Option<Cart>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let id = first.text("id")?;
    let user_id = first.text("user_id")?;
    let status = first.text("status")?;
    let currency = first.text("currency")?;
    let order_id = first.opt_text("order_id")?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(sku) = row.opt_text("sku")? {
            items.push(CartLine {
                sku: parse_stored("sku", &sku, Sku::parse)?,
                quantity: row.int("quantity")?,
                price_cents: row.int("price_cents")?,
            });
        }
    }
    Ok(Some(Cart {
        id: parse_stored("cart id", &id, CartId::parse)?,
        user_id: parse_stored("user id", &user_id, UserId::parse)?,
        status: parse_stored("cart status", &status, |s| CartStatus::parse(s).ok_or("unknown status"))?,
        currency: parse_stored("currency", &currency, Currency::parse)?,
        items,
        order_id: order_id
            .map(|o| parse_stored("order id", &o, OrderId::parse))
            .transpose()?,
    }))
}

/// Why an item was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddItemFailure {
    /// There is no such cart.
    #[error("cart not found")]
    NotFound,
    /// The cart's rules refuse it.
    #[error(transparent)]
    Rejected(AddItemError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Stores a new, empty cart.
    pub async fn create_cart(&self, cart: &Cart, now_ms: i64) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query(
                "INSERT INTO carts (id, user_id, status, currency, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(cart.id.as_str())
            .bind(cart.user_id.as_str())
            .bind(cart.status.as_str())
            .bind(cart.currency.as_str())
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// A cart with its lines.
    pub async fn cart(&self, id: &CartId) -> Result<Option<Cart>, StoreError> {
        with_read!(self, |conn| {
            let rows = sqlx::query(SELECT_CART).bind(id.as_str()).fetch_all(&mut *conn).await?;
            cart_from_rows(&rows)
        })
    }

    /// Adds `quantity` of `product` to an open cart and returns the updated cart.
    /// The cart row is locked first, so a concurrent checkout either sees the new
    /// line or makes this call fail with the cart no longer open.
    pub async fn add_item(
        &self,
        id: &CartId,
        product: &Product,
        quantity: Quantity,
        now_ms: i64,
    ) -> Result<Cart, AddItemFailure> {
        with_tx!(self, |tx| {
            let (cart, open) = lock_cart!(tx, id, now_ms);
            let mut cart = cart.ok_or(AddItemFailure::NotFound)?;
            if !open {
                return Err(AddItemFailure::Rejected(AddItemError::NotOpen(cart.status)));
            }
            let new_quantity = cart.check_add(product, quantity).map_err(AddItemFailure::Rejected)?;
            // After every line the cart has had: removed lines leave gaps, never repeats.
            sqlx::query(
                "INSERT INTO cart_items (cart_id, sku, quantity, price_cents, line_no) \
                 VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(line_no), -1) + 1 FROM cart_items WHERE cart_id = $1)) \
                 ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = excluded.quantity",
            )
            .bind(id.as_str())
            .bind(product.sku.as_str())
            .bind(new_quantity)
            .bind(product.price.cents)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            match cart.items.iter_mut().find(|line| line.sku == product.sku) {
                Some(line) => line.quantity = new_quantity,
                None => cart.items.push(CartLine {
                    sku: product.sku.clone(),
                    quantity: new_quantity,
                    price_cents: product.price.cents,
                }),
            }
            Ok(cart)
        })
    }
}

/// How a line of a cart changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineChange {
    /// The line holds this many units from now on.
    Set(Quantity),
    /// The line goes.
    Remove,
}

/// Why a line was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LineFailure {
    /// There is no such cart.
    #[error("cart not found")]
    CartNotFound,
    /// The cart has no line for that SKU.
    #[error("the cart has no such line")]
    LineNotFound,
    /// The cart is no longer open.
    #[error("the cart is {0}, so its items can no longer change")]
    NotOpen(CartStatus),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Sets the quantity of `sku`'s line of an open cart, or removes the line, and
    /// returns the updated cart. Locks the cart row first, as [`Store::add_item`] does.
    pub async fn change_line(
        &self,
        id: &CartId,
        sku: &Sku,
        change: LineChange,
        now_ms: i64,
    ) -> Result<Cart, LineFailure> {
        with_tx!(self, |tx| {
            let (cart, open) = lock_cart!(tx, id, now_ms);
            let mut cart = cart.ok_or(LineFailure::CartNotFound)?;
            if !open {
                return Err(LineFailure::NotOpen(cart.status));
            }
            let Some(position) = cart.items.iter().position(|line| &line.sku == sku) else {
                return Err(LineFailure::LineNotFound);
            };
            match change {
                LineChange::Set(quantity) => {
                    sqlx::query("UPDATE cart_items SET quantity = $3 WHERE cart_id = $1 AND sku = $2")
                        .bind(id.as_str())
                        .bind(sku.as_str())
                        .bind(quantity.get())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                    cart.items[position].quantity = quantity.get();
                }
                LineChange::Remove => {
                    sqlx::query("DELETE FROM cart_items WHERE cart_id = $1 AND sku = $2")
                        .bind(id.as_str())
                        .bind(sku.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                    cart.items.remove(position);
                }
            }
            Ok(cart)
        })
    }
}
