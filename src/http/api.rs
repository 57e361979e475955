//! The JSON shapes of the API, with their OpenAPI schemas. Requests are parsed by
//! hand from the body object (so every bad field gets the contract's error), into
//! these types; responses are serialized from them.

use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::extract::{Fields, Object, invalid_id};
use crate::clock;
use crate::domain::{Cart, CartId, Currency, Order, Product, Quantity, Sku, UserId};
use crate::error::ApiError;

/// A product of the catalog.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    /// Stock-keeping unit.
    #[schema(example = "SKU-TSHIRT")]
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    #[schema(minimum = 0)]
    pub price_cents: i64,
    /// ISO 4217 currency code.
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

impl From<&Product> for ProductView {
    fn from(product: &Product) -> Self {
        Self {
            sku: product.sku.to_string(),
            name: product.name.clone(),
            price_cents: product.price.cents,
            currency: product.price.currency.to_string(),
        }
    }
}

/// The catalog.
#[derive(Serialize, ToSchema)]
pub struct ProductList {
    /// Every product, by SKU.
    pub products: Vec<ProductView>,
}

/// A cart's life-cycle state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CartStatusView {
    /// Items can be added; the cart can be checked out.
    Open,
    /// A checkout is in progress; items are frozen.
    CheckingOut,
    /// The order is confirmed.
    Completed,
}

/// One line of a cart or an order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    /// The product.
    pub sku: String,
    /// Units.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// Unit price in cents, as of when the line was created.
    #[schema(minimum = 0)]
    pub price_cents: i64,
}

/// A shopping cart.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartView {
    /// Identifier.
    pub cart_id: String,
    /// Owner.
    pub user_id: String,
    /// State.
    pub status: CartStatusView,
    /// Lines, in the order they were first added.
    pub items: Vec<LineView>,
    /// Sum of quantity times price, in cents.
    #[schema(minimum = 0)]
    pub total_cents: i64,
    /// ISO 4217 currency code of every line.
    pub currency: String,
    /// The confirmed order, once there is one.
    pub order_id: Option<String>,
}

impl From<&Cart> for CartView {
    fn from(cart: &Cart) -> Self {
        Self {
            cart_id: cart.id.to_string(),
            user_id: cart.user_id.to_string(),
            status: match cart.status {
                crate::domain::CartStatus::Open => CartStatusView::Open,
                crate::domain::CartStatus::CheckingOut => CartStatusView::CheckingOut,
                crate::domain::CartStatus::Completed => CartStatusView::Completed,
            },
            items: cart
                .items
                .iter()
                .map(|line| LineView {
                    sku: line.sku.to_string(),
                    quantity: line.quantity,
                    price_cents: line.price_cents,
                })
                .collect(),
            total_cents: cart.total_cents(),
            currency: cart.currency.to_string(),
            order_id: cart.order_id.as_ref().map(ToString::to_string),
        }
    }
}

/// An order's state; orders exist only once confirmed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatusView {
    /// Paid and recorded.
    Confirmed,
}

/// The answer to a successful checkout.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutResult {
    /// The new order.
    pub order_id: String,
    /// The payment gateway's charge.
    pub transaction_id: String,
    /// Always `CONFIRMED`.
    pub status: OrderStatusView,
    /// Amount charged, in cents.
    #[schema(minimum = 0)]
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
}

/// A confirmed order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// Identifier.
    pub order_id: String,
    /// Buyer.
    pub user_id: String,
    /// The cart it was made from.
    pub cart_id: String,
    /// Always `CONFIRMED`.
    pub status: OrderStatusView,
    /// The payment gateway's charge.
    pub transaction_id: String,
    /// Amount charged, in cents.
    #[schema(minimum = 0)]
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
    /// What was bought.
    pub items: Vec<LineView>,
    /// When it was confirmed (RFC 3339).
    pub created_at: String,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        Self {
            order_id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            cart_id: order.cart_id.to_string(),
            status: OrderStatusView::Confirmed,
            transaction_id: order.transaction_id.clone(),
            total_cents: order.total_cents,
            currency: order.currency.to_string(),
            items: order
                .items
                .iter()
                .map(|line| LineView {
                    sku: line.sku.to_string(),
                    quantity: line.quantity,
                    price_cents: line.price_cents,
                })
                .collect(),
            created_at: clock::rfc3339_ms(order.created_at_ms),
        }
    }
}

/// Every error: a code, a message for people, and fields that depend on the code.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code, such as `PAYMENT_DECLINED`.
    pub error: String,
    /// Human-readable explanation; never internal detail.
    pub message: String,
    /// `MISSING_REQUIRED_FIELDS`: the missing fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// `INVALID_FIELD`: the field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `INVENTORY_CONFLICT`: SKUs that cannot be reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_skus: Option<Vec<String>>,
    /// `PAYMENT_DECLINED`: the gateway's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// 503: seconds until a retry makes sense (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// 503: `paymentGateway`, `inventoryService`, `database` or `server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependency: Option<String>,
    /// 5xx: quote it to support; also in `X-Error-Id` and the server's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^ERR-[0-9]+-[0-9A-Z]{6}$")]
    pub error_id: Option<String>,
}

/// `POST /api/carts` body (optional).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateCartRequest {
    /// ISO 4217 code the cart is priced in; USD when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
}

/// A parsed `POST /api/carts` body.
pub struct CreateCart {
    /// Currency of the cart.
    pub currency: Currency,
}

impl CreateCart {
    /// Parses the body object.
    pub fn parse(object: &Object<'_>) -> Result<Self, ApiError> {
        let currency = match Fields(object).optional_string("currency")? {
            None => Currency::USD,
            Some(code) => Currency::parse(code).map_err(|why| ApiError::invalid("currency", why))?,
        };
        Ok(Self { currency })
    }
}

/// `POST /api/carts/{cartId}/items` body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AddItemRequest {
    /// The product to add.
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    sku: String,
    /// Units to add to the line.
    #[schema(minimum = 1, maximum = 1000)]
    quantity: i64,
}

/// A parsed add-item body.
pub struct AddItem {
    /// The product.
    pub sku: Sku,
    /// Units to add.
    pub quantity: Quantity,
}

impl AddItem {
    /// Parses the body object.
    pub fn parse(object: &Object<'_>) -> Result<Self, ApiError> {
        let fields = Fields(object);
        let sku = fields
            .string("sku")?
            .ok_or_else(|| ApiError::invalid("sku", "is required"))?;
        let quantity = fields
            .integer("quantity", 1..=crate::domain::cart::MAX_QUANTITY)?
            .ok_or_else(|| ApiError::invalid("quantity", "is required: a whole number from 1 to 1000"))?;
        Ok(Self {
            sku: Sku::parse(sku).map_err(invalid_id("sku"))?,
            quantity: Quantity::new(quantity).ok_or_else(|| ApiError::invalid("quantity", "must be 1 to 1000"))?,
        })
    }
}

/// `POST /api/checkout/complete` body.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct CheckoutRequest {
    /// The cart to check out.
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    cart_id: String,
    /// The payment gateway's token for the card (`tok_...`).
    #[schema(min_length = 1, max_length = 256, example = "tok_visa")]
    payment_token: String,
    /// The buyer; must be the token's user.
    #[schema(
        min_length = 1,
        max_length = 256,
        example = "usr_456",
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    user_id: String,
}

/// A card token. Never logged, never stored, never printed.
pub struct PaymentToken(String);

impl PaymentToken {
    /// The token, to send to the gateway.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PaymentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PaymentToken(***)")
    }
}

/// A parsed checkout body.
#[derive(Debug)]
pub struct Checkout {
    /// The cart.
    pub cart_id: CartId,
    /// The card.
    pub payment_token: PaymentToken,
    /// The buyer.
    pub user_id: UserId,
}

impl Checkout {
    /// Parses the body object: missing fields first (all of them), then bad ones.
    pub fn parse(object: &Object<'_>) -> Result<Self, ApiError> {
        let fields = Fields(object);
        let cart_id = fields.string("cartId");
        let payment_token = fields.string("paymentToken");
        let user_id = fields.string("userId");
        let missing: Vec<&'static str> = [
            ("cartId", &cart_id),
            ("paymentToken", &payment_token),
            ("userId", &user_id),
        ]
        .into_iter()
        .filter(|(_, value)| matches!(value, Ok(None)))
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(ApiError::MissingRequiredFields(missing));
        }
        let (cart_id, payment_token, user_id) = (cart_id?, payment_token?, user_id?);
        let (Some(cart_id), Some(payment_token), Some(user_id)) = (cart_id, payment_token, user_id) else {
            return Err(ApiError::MissingRequiredFields(vec![
                "cartId",
                "paymentToken",
                "userId",
            ]));
        };
        Ok(Self {
            cart_id: CartId::parse(cart_id).map_err(invalid_id("cartId"))?,
            payment_token: PaymentToken(payment_token.to_string()),
            user_id: UserId::parse(user_id).map_err(invalid_id("userId"))?,
        })
    }

    /// A digest of the request, to tell an `Idempotency-Key` replay from a reuse.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.cart_id.as_str(),
            self.payment_token.expose(),
            self.user_id.as_str(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `value` as the text of a request body.
    struct Body(String);

    impl Body {
        /// The body parsed as a request's is.
        fn get(&self) -> Object<'_> {
            Object::parse(self.0.as_bytes())
                .expect("test bodies are JSON")
                .expect("test bodies are objects")
        }
    }

    fn object(value: serde_json::Value) -> Body {
        Body(value.to_string())
    }

    #[test]
    fn checkout_lists_every_missing_field() {
        let error = Checkout::parse(&object(json!({"cartId": "", "userId": null})).get()).expect_err("missing");
        match error {
            ApiError::MissingRequiredFields(fields) => assert_eq!(fields, vec!["cartId", "paymentToken", "userId"]),
            other => panic!("unexpected {other:?}"),
        }
        let error = Checkout::parse(&object(json!({"cartId": "c", "userId": "u"})).get()).expect_err("missing");
        assert!(matches!(error, ApiError::MissingRequiredFields(ref f) if f == &vec!["paymentToken"]));
    }

    #[test]
    fn checkout_rejects_wrong_types_and_long_values_by_field() {
        let error = Checkout::parse(&object(json!({"cartId": 5, "paymentToken": "tok", "userId": "u"})).get())
            .expect_err("bad");
        assert!(
            matches!(error, ApiError::InvalidField { field: "cartId", .. }),
            "{error:?}"
        );
        let long = "x".repeat(257);
        let error = Checkout::parse(&object(json!({"cartId": "c", "paymentToken": long, "userId": "u"})).get())
            .expect_err("bad");
        assert!(
            matches!(
                error,
                ApiError::InvalidField {
                    field: "paymentToken",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn fingerprints_differ_when_any_field_differs_and_hide_the_token() {
        let parse = |token: &str| {
            Checkout::parse(&object(json!({"cartId": "c", "paymentToken": token, "userId": "u"})).get()).expect("valid")
        };
        assert_eq!(parse("tok_a").fingerprint(), parse("tok_a").fingerprint());
        assert_ne!(parse("tok_a").fingerprint(), parse("tok_b").fingerprint());
        assert!(!parse("tok_a").fingerprint().contains("tok_a"));
        assert!(!format!("{:?}", parse("tok_secret")).contains("tok_secret"));
    }

    #[test]
    fn quantities_outside_the_range_name_the_field() {
        for bad in [json!(0), json!(1001), json!(1.5), json!("3"), json!(1e300), json!(-1)] {
            let error = AddItem::parse(&object(json!({"sku": "SKU-MUG", "quantity": bad})).get()).err();
            assert!(
                matches!(error, Some(ApiError::InvalidField { field: "quantity", .. })),
                "{bad}"
            );
        }
        assert!(AddItem::parse(&object(json!({"sku": "SKU-MUG", "quantity": 1000})).get()).is_ok());
    }
}
