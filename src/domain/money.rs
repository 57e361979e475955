//! Money: integer cents and an ISO 4217 currency code, never floating point.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A three-letter ISO 4217 code such as `USD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// US dollars, the currency of a cart created without one.
    pub const USD: Currency = Currency(*b"USD");

    /// Accepts exactly three upper-case ASCII letters.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Currency([*a, *b, *c])),
            _ => Err("a currency is three upper-case letters, such as USD".to_string()),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored, see `parse`.
        std::str::from_utf8(&self.0).expect("a currency code is ASCII")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An amount in the smallest unit of its currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    /// Amount in cents (or the currency's minor unit).
    pub cents: i64,
    /// Currency of the amount.
    pub currency: Currency,
}

/// The largest price the catalog accepts: ten million in major units.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_three_capitals() {
        assert_eq!(Currency::parse("EUR").map(|c| c.to_string()), Ok("EUR".to_string()));
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("US").is_err());
        assert!(Currency::parse("USDT").is_err());
        assert!(Currency::parse("ÜSD").is_err());
    }
}
