//! Identifiers: opaque strings with a kind prefix (`cart_`, `ord_`, `att_`), plus
//! the user IDs and SKUs that arrive from outside.
//!
//! The IDs this service creates sort by the millisecond they were made in: a row
//! inserted under a new ID then lands beside the rows of the last few moments, in
//! index pages the database has just written, instead of in a random page of each
//! index (which it would write again, whole, to its log).

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::MAX_FIELD_CHARS;

/// Why a string is not a valid identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty or only whitespace.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than [`MAX_FIELD_CHARS`] characters.
    #[error("must be at most 256 characters")]
    TooLong,
    /// The string contains control characters.
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Checks the rules every identifier shares.
fn check(text: &str) -> Result<(), IdError> {
    if text.trim().is_empty() {
        return Err(IdError::Empty);
    }
    if text.chars().count() > MAX_FIELD_CHARS {
        return Err(IdError::TooLong);
    }
    if text.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

/// Lower-case base-32 without the letters easily misread (i, l, o, u).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `prefix` followed by 20 random characters (100 bits from the OS-seeded CSPRNG).
pub fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 20);
    id.push_str(prefix);
    push_random(&mut id, 20);
    id
}

/// `bytes` random bytes as lower-case hex: W3C trace and span IDs (16 and 8 bytes),
/// never all zeros.
pub fn random_hex(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    while random.iter().all(|b| *b == 0) {
        rand::rng().fill(&mut random[..]);
    }
    hex::encode(random)
}

/// `prefix`, then `unix_ms` as 10 characters (50 bits, enough until the year 37,000)
/// and 16 random characters (80 bits). The alphabet is in ASCII order, so IDs made
/// in a later millisecond sort after earlier ones; the random part keeps IDs made
/// in the same millisecond, by any number of instances, apart.
pub fn sortable_id(prefix: &str, unix_ms: i64) -> String {
    // Before 1970 (a clock gone badly wrong) counts as 1970: the ID stays valid.
    let ms = u64::try_from(unix_ms).unwrap_or(0);
    let mut id = String::with_capacity(prefix.len() + 26);
    id.push_str(prefix);
    for shift in (0..10).rev() {
        id.push(char::from(ALPHABET[((ms >> (5 * shift)) & 31) as usize]));
    }
    push_random(&mut id, 16);
    id
}

/// Appends `count` (at most 25) random characters of [`ALPHABET`].
fn push_random(id: &mut String, count: usize) {
    let mut bits: u128 = rand::rng().random();
    let mut chars = [0u8; 25];
    let chars = &mut chars[..count];
    for char in chars.iter_mut() {
        *char = ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    id.push_str(std::str::from_utf8(chars).expect("the alphabet is ASCII"));
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, prefix = $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new identifier, sorting after those made before it (see
            /// [`sortable_id`]).
            pub fn generate() -> Self {
                Self(sortable_id($prefix, crate::clock::Clock::system().now_ms()))
            }

            /// Accepts any non-empty string of at most 256 characters without
            /// control characters: lookups of unknown IDs simply find nothing.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                check(text)?;
                Ok(Self(text.to_string()))
            }

            /// The identifier as stored and sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A shopping cart.
    CartId, prefix = "cart_"
);
identifier!(
    /// A confirmed order.
    OrderId, prefix = "ord_"
);
identifier!(
    /// One try at checking a cart out. It doubles as the inventory reservation ID and
    /// as the payment gateway's idempotency key, so a retried step can never act twice.
    AttemptId, prefix = "att_"
);
identifier!(
    /// A shopper, as named by the token's `sub` claim.
    UserId, prefix = "usr_"
);
identifier!(
    /// A product's stock-keeping unit.
    Sku, prefix = "sku_"
);

impl OrderId {
    /// The order an attempt creates, named after it: whoever completes the attempt
    /// (the request, or the reconciler after a crash) creates the same order.
    pub fn for_attempt(attempt: &AttemptId) -> Self {
        let suffix = attempt.as_str().strip_prefix("att_").unwrap_or(attempt.as_str());
        Self(format!("ord_{suffix}"))
    }
}

impl Sku {
    /// The stricter form the catalog importer requires: 1–64 characters of
    /// `A-Z a-z 0-9 . _ -`.
    pub fn parse_catalog(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(text.to_string()))
        } else {
            Err("a SKU must be 1 to 64 characters of letters, digits, '.', '_' or '-'".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_carry_their_prefix_and_differ() {
        let a = CartId::generate();
        let b = CartId::generate();
        assert!(a.as_str().starts_with("cart_") && a.as_str().len() == 31, "{a}");
        assert_ne!(a, b);
        assert!(AttemptId::generate().as_str().starts_with("att_"));
        assert_eq!(random_id("req_").len(), 24);
    }

    #[test]
    fn random_characters_are_of_the_alphabet_and_use_all_of_it() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let id = random_id("req_");
            let random = &id.as_bytes()[4..];
            assert_eq!(random.len(), 20, "{id}");
            assert!(random.iter().all(|b| ALPHABET.contains(b)), "{id}");
            seen.extend(random.iter().copied());
        }
        // 4,000 draws of 32 characters: each is missed with odds of about 1e-55.
        assert_eq!(seen.len(), ALPHABET.len());
    }

    #[test]
    fn sortable_ids_sort_by_their_millisecond_and_spell_it_out() {
        assert_eq!(&sortable_id("att_", 0)[..14], "att_0000000000");
        assert_eq!(&sortable_id("att_", 1)[..14], "att_0000000001");
        assert_eq!(&sortable_id("att_", 32)[..14], "att_0000000010");
        // 2026-12-01T00:00:00Z, written in base 32 with the service's alphabet.
        assert_eq!(&sortable_id("att_", 1_796_083_200_000)[4..14], "01m8qedc00");
        assert_eq!(&sortable_id("att_", -5)[..14], "att_0000000000");
        let moments = [
            0,
            1,
            31,
            32,
            999,
            1_000,
            1_796_083_200_000,
            1_796_083_200_001,
            (1 << 50) - 1,
        ];
        for pair in moments.windows(2) {
            let (earlier, later) = (sortable_id("att_", pair[0]), sortable_id("att_", pair[1]));
            assert!(earlier < later, "{earlier} should sort before {later}");
        }
        let same: std::collections::HashSet<String> = (0..1_000).map(|_| sortable_id("att_", 1_000)).collect();
        assert_eq!(same.len(), 1_000, "IDs of one millisecond differ by their random part");
    }

    #[test]
    fn parsing_rejects_empty_long_and_control_strings() {
        assert_eq!(CartId::parse(""), Err(IdError::Empty));
        assert_eq!(CartId::parse("   "), Err(IdError::Empty));
        assert_eq!(CartId::parse(&"x".repeat(257)), Err(IdError::TooLong));
        assert!(CartId::parse(&"é".repeat(256)).is_ok());
        assert_eq!(UserId::parse("usr\n1"), Err(IdError::ControlCharacter));
    }

    #[test]
    fn an_attempt_names_its_order() {
        let attempt = AttemptId::parse("att_0123456789abcdefghjk").expect("valid");
        assert_eq!(OrderId::for_attempt(&attempt).as_str(), "ord_0123456789abcdefghjk");
        assert_eq!(OrderId::for_attempt(&attempt), OrderId::for_attempt(&attempt));
    }

    #[test]
    fn catalog_skus_are_strict() {
        assert!(Sku::parse_catalog("SKU-TSHIRT").is_ok());
        assert!(Sku::parse_catalog("SKU TSHIRT").is_err());
        assert!(Sku::parse_catalog("").is_err());
        assert!(Sku::parse_catalog(&"A".repeat(65)).is_err());
    }
}
