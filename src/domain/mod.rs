//! The checkout's vocabulary, free of I/O: identifiers, money, products, carts,
//! orders and the states a checkout attempt moves through. Request fields become
//! these types before any database or network call is made.

pub mod attempt;
pub mod cart;
pub mod ids;
pub mod money;
pub mod order;
pub mod payment;

pub use attempt::{Attempt, AttemptState, InventoryAction};
pub use cart::{Cart, CartLine, CartStatus, Product, Quantity};
pub use ids::{AttemptId, CartId, IdError, OrderId, Sku, UserId};
pub use money::{Currency, Money};
pub use order::{Order, OrderLine, OrderStatus};
pub use payment::PaymentToken;

/// The longest string accepted in any request field.
pub const MAX_FIELD_CHARS: usize = 256;
