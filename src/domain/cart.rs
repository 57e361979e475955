//! Products and carts, and the rules for adding to a cart.

use std::fmt;

use super::{CartId, Currency, Money, OrderId, Sku, UserId};

/// Most units of one SKU a cart line may hold (the API's quantity bound).
pub const MAX_QUANTITY: i64 = 1000;

/// Most distinct SKUs one cart may hold.
pub const MAX_LINES: usize = 100;

/// A number of units: 1 to [`MAX_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i64);

impl Quantity {
    /// Accepts 1 to 1000.
    pub fn new(value: i64) -> Option<Self> {
        (1..=MAX_QUANTITY).contains(&value).then_some(Quantity(value))
    }

    /// The number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    /// Stock-keeping unit.
    pub sku: Sku,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Money,
}

/// Where a cart is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CartStatus {
    /// Items can be added and the cart can be checked out.
    Open,
    /// A checkout attempt owns the cart; its items are frozen.
    CheckingOut,
    /// An order was confirmed for the cart.
    Completed,
}

impl CartStatus {
    /// The status as stored and sent: `OPEN`, `CHECKING_OUT`, `COMPLETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            CartStatus::Open => "OPEN",
            CartStatus::CheckingOut => "CHECKING_OUT",
            CartStatus::Completed => "COMPLETED",
        }
    }

    /// Reads a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "OPEN" => Some(CartStatus::Open),
            "CHECKING_OUT" => Some(CartStatus::CheckingOut),
            "COMPLETED" => Some(CartStatus::Completed),
            _ => None,
        }
    }
}

impl fmt::Display for CartStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SKU in a cart, at the price it had when first added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartLine {
    /// The product.
    pub sku: Sku,
    /// Units of it.
    pub quantity: i64,
    /// Unit price when the line was created.
    pub price_cents: i64,
}

/// A shopper's cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cart {
    /// Identifier.
    pub id: CartId,
    /// Owner.
    pub user_id: UserId,
    /// Life-cycle state.
    pub status: CartStatus,
    /// Currency every line is priced in.
    pub currency: Currency,
    /// Lines in the order they were first added.
    pub items: Vec<CartLine>,
    /// The confirmed order, once there is one.
    pub order_id: Option<OrderId>,
}

/// Why an item cannot be added to a cart.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddItemError {
    /// The cart is no longer open.
    #[error("the cart is {0}, so its items can no longer change")]
    NotOpen(CartStatus),
    /// The product is priced in another currency than the cart.
    #[error("{sku} is priced in {product}, but this cart is in {cart}")]
    CurrencyMismatch {
        /// The product.
        sku: Sku,
        /// The product's currency.
        product: Currency,
        /// The cart's currency.
        cart: Currency,
    },
    /// The line would hold more than [`MAX_QUANTITY`] units.
    #[error("a cart line holds at most {MAX_QUANTITY} units; this one would hold {0}")]
    LineTooLarge(i64),
    /// The cart already holds [`MAX_LINES`] distinct SKUs.
    #[error("a cart holds at most {MAX_LINES} different products")]
    TooManyLines,
}

impl Cart {
    /// Sum of every line's quantity times its price.
    pub fn total_cents(&self) -> i64 {
        // Bounded: at most MAX_LINES lines of MAX_QUANTITY units of MAX_PRICE_CENTS,
        // about 1e14, far inside i64.
        self.items.iter().map(|l| l.quantity * l.price_cents).sum()
    }

    /// Checks that `quantity` more of `product` may be added; returns the line's new quantity.
    pub fn check_add(&self, product: &Product, quantity: Quantity) -> Result<i64, AddItemError> {
        if self.status != CartStatus::Open {
            return Err(AddItemError::NotOpen(self.status));
        }
        if product.price.currency != self.currency {
            return Err(AddItemError::CurrencyMismatch {
                sku: product.sku.clone(),
                product: product.price.currency,
                cart: self.currency,
            });
        }
        let existing = self.items.iter().find(|l| l.sku == product.sku);
        if existing.is_none() && self.items.len() >= MAX_LINES {
            return Err(AddItemError::TooManyLines);
        }
        let new_quantity = existing.map_or(0, |l| l.quantity) + quantity.get();
        if new_quantity > MAX_QUANTITY {
            return Err(AddItemError::LineTooLarge(new_quantity));
        }
        Ok(new_quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, cents: i64, currency: Currency) -> Product {
        Product {
            sku: Sku::parse(sku).expect("valid sku"),
            name: sku.to_string(),
            price: Money { cents, currency },
        }
    }

    fn cart() -> Cart {
        Cart {
            id: CartId::generate(),
            user_id: UserId::parse("usr_456").expect("valid user"),
            status: CartStatus::Open,
            currency: Currency::USD,
            items: vec![CartLine {
                sku: Sku::parse("SKU-MUG").expect("valid sku"),
                quantity: 999,
                price_cents: 1200,
            }],
            order_id: None,
        }
    }

    #[test]
    fn quantities_are_one_to_a_thousand() {
        assert!(Quantity::new(0).is_none());
        assert!(Quantity::new(1).is_some());
        assert!(Quantity::new(1000).is_some());
        assert!(Quantity::new(1001).is_none());
        assert!(Quantity::new(-1).is_none());
    }

    #[test]
    fn adding_checks_status_currency_and_line_size() {
        let mut cart = cart();
        let one = Quantity::new(1).expect("valid");
        assert_eq!(cart.check_add(&product("SKU-MUG", 1200, Currency::USD), one), Ok(1000));
        assert_eq!(
            cart.check_add(
                &product("SKU-MUG", 1200, Currency::USD),
                Quantity::new(2).expect("valid")
            ),
            Err(AddItemError::LineTooLarge(1001))
        );
        let euro = Currency::parse("EUR").expect("valid");
        assert!(matches!(
            cart.check_add(&product("SKU-EU", 100, euro), one),
            Err(AddItemError::CurrencyMismatch { .. })
        ));
        cart.status = CartStatus::Completed;
        assert_eq!(
            cart.check_add(&product("SKU-MUG", 1200, Currency::USD), one),
            Err(AddItemError::NotOpen(CartStatus::Completed))
        );
    }

    #[test]
    fn a_cart_holds_a_bounded_number_of_lines() {
        let mut cart = cart();
        cart.items = (0..MAX_LINES)
            .map(|i| CartLine {
                sku: Sku::parse(&format!("SKU-{i}")).expect("valid sku"),
                quantity: 1,
                price_cents: 1,
            })
            .collect();
        let one = Quantity::new(1).expect("valid");
        assert_eq!(
            cart.check_add(&product("SKU-NEW", 1, Currency::USD), one),
            Err(AddItemError::TooManyLines)
        );
        assert!(cart.check_add(&product("SKU-1", 1, Currency::USD), one).is_ok());
        assert_eq!(cart.total_cents(), MAX_LINES as i64);
    }
}
