//! The JSON shapes of the API, with their OpenAPI schemas: one serde type per
//! request body, which both parses the body and describes it in the API document,
//! then becomes domain types (`TryFrom`) before any I/O; responses are serialized
//! from the view types.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{RequestBody, invalid_id};
use crate::clock;
use crate::domain::{Cart, CartId, Currency, MAX_FIELD_CHARS, Order, PaymentToken, Product, Quantity, Sku, UserId};

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
    /// The payment provider's charge (a sandbox `txn_...` or a Stripe PaymentIntent
    /// `pi_...`); null for an order whose total is 0, which nothing was charged for.
    pub transaction_id: Option<String>,
    /// Always `CONFIRMED`.
    pub status: OrderStatusView,
    /// Amount charged, in cents.
    #[schema(minimum = 0)]
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
}

/// A payment waiting for the buyer (`202 REQUIRES_ACTION`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    /// Always `REQUIRES_ACTION`.
    #[schema(example = "REQUIRES_ACTION")]
    pub status: &'static str,
    /// The cart, `CHECKING_OUT` until the payment is decided.
    pub cart_id: String,
    /// The checkout attempt.
    pub attempt_id: String,
    /// The Stripe PaymentIntent.
    pub payment_intent_id: String,
    /// For Stripe.js in the buyer's browser to handle the action.
    pub client_secret: String,
    /// What the buyer must do, as Stripe says it.
    #[schema(value_type = Object)]
    pub next_action: serde_json::Value,
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
    /// The payment provider's charge (a sandbox `txn_...` or a Stripe PaymentIntent
    /// `pi_...`); null for an order whose total is 0, which nothing was charged for.
    pub transaction_id: Option<String>,
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
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateCartRequest {
    /// ISO 4217 code the cart is priced in; USD when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    #[serde(default)]
    pub currency: Option<String>,
}

impl RequestBody for CreateCartRequest {
    const FIELDS: &'static [&'static str] = &["currency"];
}

impl CreateCartRequest {
    /// The cart's currency: the one asked for, or USD.
    pub fn currency(&self) -> Result<Currency, ApiError> {
        match self.currency.as_deref() {
            None => Ok(Currency::USD),
            Some(code) => Currency::parse(code).map_err(|why| ApiError::invalid("currency", why)),
        }
    }
}

/// `POST /api/carts/{cartId}/items` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddItemRequest {
    /// The product to add.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    #[serde(default)]
    pub sku: Option<String>,
    /// Units to add to the line.
    #[schema(required = true, value_type = i64, minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub quantity: Option<i64>,
}

/// A whole number as JSON Schema's `integer` means it: `3` or `3.0`, not `3.5`.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(whole) = number.as_i64() {
        return Ok(Some(whole));
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && value.abs() < 9.0e15 => Ok(Some(value as i64)),
        _ => Err(serde::de::Error::custom(format_args!("{number} is not a whole number"))),
    }
}

impl RequestBody for AddItemRequest {
    const FIELDS: &'static [&'static str] = &["sku", "quantity"];
}

/// A parsed add-item body.
pub struct AddItem {
    /// The product.
    pub sku: Sku,
    /// Units to add.
    pub quantity: Quantity,
}

/// `quantity` as 1 to 1000 units, or 400 naming it.
fn quantity(quantity: Option<i64>) -> Result<Quantity, ApiError> {
    let quantity =
        quantity.ok_or_else(|| ApiError::invalid("quantity", "is required: a whole number from 1 to 1000"))?;
    Quantity::new(quantity).ok_or_else(|| ApiError::invalid("quantity", "must be a whole number from 1 to 1000"))
}

impl TryFrom<AddItemRequest> for AddItem {
    type Error = ApiError;

    fn try_from(request: AddItemRequest) -> Result<Self, ApiError> {
        let sku = request.sku.ok_or_else(|| ApiError::invalid("sku", "is required"))?;
        Ok(Self {
            sku: Sku::parse(&sku).map_err(invalid_id("sku"))?,
            quantity: quantity(request.quantity)?,
        })
    }
}

/// `PUT /api/carts/{cartId}/items/{sku}` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetQuantityRequest {
    /// The line's new number of units.
    #[schema(required = true, value_type = i64, minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub quantity: Option<i64>,
}

impl RequestBody for SetQuantityRequest {
    const FIELDS: &'static [&'static str] = &["quantity"];
}

impl SetQuantityRequest {
    /// The quantity, 1 to 1000.
    pub fn quantity(&self) -> Result<Quantity, ApiError> {
        quantity(self.quantity)
    }
}

/// `POST /api/checkout/complete` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutRequest {
    /// The cart to check out.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    #[serde(default)]
    pub cart_id: Option<String>,
    /// The card: a payment token (`tok_...`), or a Stripe PaymentMethod (`pm_...`).
    #[schema(required = true, value_type = String, min_length = 1, max_length = 256, example = "tok_visa", pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    #[serde(default)]
    pub payment_token: Option<String>,
    /// The buyer; must be the token's user.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 256, example = "usr_456", pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    #[serde(default)]
    pub user_id: Option<String>,
}

impl RequestBody for CheckoutRequest {
    const FIELDS: &'static [&'static str] = &["cartId", "paymentToken", "userId"];
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

impl TryFrom<CheckoutRequest> for Checkout {
    type Error = ApiError;

    /// Missing fields first (all of them: missing, null or blank), then bad ones.
    fn try_from(request: CheckoutRequest) -> Result<Self, ApiError> {
        let present = |value: Option<String>| value.filter(|text| !text.trim().is_empty());
        let (cart_id, payment_token, user_id) = (
            present(request.cart_id),
            present(request.payment_token),
            present(request.user_id),
        );
        let missing: Vec<&'static str> = [
            ("cartId", cart_id.is_none()),
            ("paymentToken", payment_token.is_none()),
            ("userId", user_id.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        let (Some(cart_id), Some(payment_token), Some(user_id)) = (cart_id, payment_token, user_id) else {
            return Err(ApiError::MissingRequiredFields(missing));
        };
        if payment_token.chars().count() > MAX_FIELD_CHARS {
            return Err(ApiError::invalid("paymentToken", "must be at most 256 characters"));
        }
        Ok(Self {
            cart_id: CartId::parse(&cart_id).map_err(invalid_id("cartId"))?,
            payment_token: PaymentToken::new(payment_token),
            user_id: UserId::parse(&user_id).map_err(invalid_id("userId"))?,
        })
    }
}

impl Checkout {
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
    use crate::http::extract::parse;

    fn checkout(body: serde_json::Value) -> Result<Checkout, ApiError> {
        let request: CheckoutRequest = parse(body.to_string().as_bytes())?.expect("an object");
        Checkout::try_from(request)
    }

    #[test]
    fn checkout_lists_every_missing_field() {
        let error = checkout(serde_json::json!({"cartId": "", "userId": null})).expect_err("missing");
        match error {
            ApiError::MissingRequiredFields(fields) => assert_eq!(fields, vec!["cartId", "paymentToken", "userId"]),
            other => panic!("unexpected {other:?}"),
        }
        let error = checkout(serde_json::json!({"cartId": "c", "userId": "u"})).expect_err("missing");
        assert!(matches!(error, ApiError::MissingRequiredFields(ref f) if f == &vec!["paymentToken"]));
    }

    #[test]
    fn checkout_rejects_wrong_types_and_long_values_by_field() {
        let error = checkout(serde_json::json!({"cartId": 5, "paymentToken": "tok", "userId": "u"})).expect_err("bad");
        assert!(
            matches!(error, ApiError::InvalidField { field: "cartId", .. }),
            "{error:?}"
        );
        let long = "x".repeat(257);
        let error = checkout(serde_json::json!({"cartId": "c", "paymentToken": long, "userId": "u"})).expect_err("bad");
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
            checkout(serde_json::json!({"cartId": "c", "paymentToken": token, "userId": "u"})).expect("valid")
        };
        assert_eq!(parse("tok_a").fingerprint(), parse("tok_a").fingerprint());
        assert_ne!(parse("tok_a").fingerprint(), parse("tok_b").fingerprint());
        assert!(!parse("tok_a").fingerprint().contains("tok_a"));
        assert!(!format!("{:?}", parse("tok_secret")).contains("tok_secret"));
    }

    #[test]
    fn quantities_outside_the_range_name_the_field() {
        let add = |quantity: serde_json::Value| -> Result<AddItem, ApiError> {
            let body = serde_json::json!({"sku": "SKU-MUG", "quantity": quantity}).to_string();
            let request: AddItemRequest = parse(body.as_bytes())?.expect("an object");
            AddItem::try_from(request)
        };
        for bad in [
            serde_json::json!(0),
            serde_json::json!(1001),
            serde_json::json!(1.5),
            serde_json::json!("3"),
            serde_json::json!(1e300),
            serde_json::json!(-1),
            serde_json::json!(u64::MAX),
        ] {
            let error = add(bad.clone()).err();
            assert!(
                matches!(error, Some(ApiError::InvalidField { field: "quantity", .. })),
                "{bad}: {error:?}"
            );
        }
        assert!(add(serde_json::json!(1000)).is_ok());
        assert_eq!(
            add(serde_json::json!(245.0)).map(|a| a.quantity.get()).ok(),
            Some(245),
            "a whole number written with a fraction"
        );
    }
}
