//! What pays for an order: the card token a client sends, kept out of every log.

use std::fmt;

/// A card token (`tok_...` for the sandbox, a PaymentMethod `pm_...` for Stripe).
/// Never logged, never stored, never printed: its `Debug` is `PaymentToken(***)`.
#[derive(Clone)]
pub struct PaymentToken(String);

impl PaymentToken {
    /// The token a client sent.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token, to send to the payment provider.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PaymentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PaymentToken(***)")
    }
}
