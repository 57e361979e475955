//! Products, carts and orders.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::api::{
    AddItem, AddItemRequest, CartView, CreateCartRequest, ErrorBody, OrderView, ProductList, ProductView,
    SetQuantityRequest,
};
use super::error::ApiError;
use super::extract::{AuthUser, JsonBody, PathId, PathPair};
use crate::app::App;
use crate::domain::cart::AddItemError;
use crate::domain::{Cart, CartId, CartStatus, OrderId, Sku};
use crate::store::carts::{AddItemFailure, LineChange, LineFailure};

/// Lists the catalog.
#[utoipa::path(
    get, path = "/api/products", tag = "shop",
    responses(
        (status = 200, description = "Every product", body = ProductList),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    )
)]
pub async fn list_products(State(app): State<Arc<App>>) -> Result<Json<ProductList>, ApiError> {
    let products = app.store.products().await?;
    Ok(Json(ProductList {
        products: products.iter().map(ProductView::from).collect(),
    }))
}

/// Creates an empty cart for the caller.
#[utoipa::path(
    post, path = "/api/carts", tag = "shop",
    request_body(content = Option<CreateCartRequest>, description = "Optional; the cart's currency", content_type = "application/json"),
    responses(
        (status = 201, description = "The new cart", body = CartView,
            links(
                ("GetCart" = (operation_id = "get_cart", parameters(("cartId" = "$response.body#/cartId")))),
                ("AddItem" = (
                    operation_id = "add_item",
                    parameters(("cartId" = "$response.body#/cartId")),
                    request_body = json!({"sku": "SKU-MUG", "quantity": 1}),
                )),
            )),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_cart(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    body: JsonBody<CreateCartRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let currency = match body.0 {
        Some(request) => request.currency()?,
        None => crate::domain::Currency::USD,
    };
    let cart = Cart {
        id: CartId::generate(),
        user_id: user,
        status: CartStatus::Open,
        currency,
        items: Vec::new(),
        order_id: None,
    };
    tracing::Span::current().record("cartId", cart.id.as_str());
    app.store.create_cart(&cart, app.clock.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(CartView::from(&cart))))
}

async fn owned_cart(app: &App, user: &crate::domain::UserId, id: &str) -> Result<Cart, ApiError> {
    let id = CartId::parse(id).map_err(|_| ApiError::CartNotFound)?;
    tracing::Span::current().record("cartId", id.as_str());
    let cart = app.store.cart(&id).await?.ok_or(ApiError::CartNotFound)?;
    if &cart.user_id != user {
        return Err(ApiError::Forbidden);
    }
    Ok(cart)
}

/// Shows one of the caller's carts.
#[utoipa::path(
    get, path = "/api/carts/{cartId}", tag = "shop",
    params(("cartId" = String, Path, description = "The cart")),
    responses(
        (status = 200, description = "The cart", body = CartView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's cart", body = ErrorBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_cart(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    PathId(id): PathId,
) -> Result<Json<CartView>, ApiError> {
    let cart = owned_cart(&app, &user, &id).await?;
    Ok(Json(CartView::from(&cart)))
}

/// Adds units of a product to one of the caller's open carts.
#[utoipa::path(
    post, path = "/api/carts/{cartId}/items", tag = "shop",
    params(("cartId" = String, Path, description = "The cart")),
    request_body(content = AddItemRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated cart", body = CartView,
            links(
                ("CheckOut" = (
                    operation_id = "complete",
                    request_body = json!({
                        "cartId": "$response.body#/cartId",
                        "paymentToken": "tok_visa",
                        "userId": "$response.body#/userId",
                    }),
                )),
            )),
        (status = 400, description = "Invalid body or field", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's cart", body = ErrorBody),
        (status = 404, description = "No such cart or product (CART_NOT_FOUND, UNKNOWN_SKU)", body = ErrorBody),
        (status = 409, description = "The cart cannot take the item: CART_NOT_OPEN (being or already checked out), \
            CURRENCY_MISMATCH (priced in another currency), CART_LIMIT_EXCEEDED (100 products or 1000 units of one)",
            body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn add_item(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    PathId(id): PathId,
    body: JsonBody<AddItemRequest>,
) -> Result<Json<CartView>, ApiError> {
    let request = AddItem::try_from(body.require()?)?;
    let cart = owned_cart(&app, &user, &id).await?;
    let product = app
        .store
        .product(&request.sku)
        .await?
        .ok_or_else(|| ApiError::UnknownSku(request.sku.to_string()))?;
    match app
        .store
        .add_item(&cart.id, &product, request.quantity, app.clock.now_ms())
        .await
    {
        Ok(cart) => Ok(Json(CartView::from(&cart))),
        Err(AddItemFailure::NotFound) => Err(ApiError::CartNotFound),
        Err(AddItemFailure::Store(error)) => Err(error.into()),
        Err(AddItemFailure::Rejected(rejection)) => Err(match rejection {
            AddItemError::NotOpen(status) => ApiError::CartNotOpen(status.as_str()),
            AddItemError::CurrencyMismatch { .. } => ApiError::CurrencyMismatch(rejection.to_string()),
            AddItemError::TooManyLines | AddItemError::LineTooLarge(_) => {
                ApiError::CartLimitExceeded(rejection.to_string())
            }
        }),
    }
}

/// Sets the number of units on one line of one of the caller's open carts.
#[utoipa::path(
    put, path = "/api/carts/{cartId}/items/{sku}", tag = "shop",
    params(("cartId" = String, Path, description = "The cart"), ("sku" = String, Path, description = "The line's product")),
    request_body(content = SetQuantityRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated cart", body = CartView),
        (status = 400, description = "Invalid body or quantity (INVALID_JSON, INVALID_FIELD)", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's cart", body = ErrorBody),
        (status = 404, description = "No such cart, or no line for that product (CART_NOT_FOUND, NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "The cart is being or was checked out (CART_NOT_OPEN)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_quantity(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    PathPair(cart_id, sku): PathPair,
    body: JsonBody<SetQuantityRequest>,
) -> Result<Json<CartView>, ApiError> {
    let quantity = body.require()?.quantity()?;
    change_line(&app, &user, &cart_id, &sku, LineChange::Set(quantity)).await
}

/// Removes one line from one of the caller's open carts.
#[utoipa::path(
    delete, path = "/api/carts/{cartId}/items/{sku}", tag = "shop",
    params(("cartId" = String, Path, description = "The cart"), ("sku" = String, Path, description = "The line's product")),
    responses(
        (status = 200, description = "The updated cart", body = CartView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's cart", body = ErrorBody),
        (status = 404, description = "No such cart, or no line for that product (CART_NOT_FOUND, NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "The cart is being or was checked out (CART_NOT_OPEN)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn remove_item(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    PathPair(cart_id, sku): PathPair,
) -> Result<Json<CartView>, ApiError> {
    change_line(&app, &user, &cart_id, &sku, LineChange::Remove).await
}

async fn change_line(
    app: &App,
    user: &crate::domain::UserId,
    cart_id: &str,
    sku: &str,
    change: LineChange,
) -> Result<Json<CartView>, ApiError> {
    let cart = owned_cart(app, user, cart_id).await?;
    let sku = Sku::parse(sku).map_err(|_| ApiError::LineNotFound(sku.to_string()))?;
    match app.store.change_line(&cart.id, &sku, change, app.clock.now_ms()).await {
        Ok(cart) => Ok(Json(CartView::from(&cart))),
        Err(LineFailure::CartNotFound) => Err(ApiError::CartNotFound),
        Err(LineFailure::LineNotFound) => Err(ApiError::LineNotFound(sku.to_string())),
        Err(LineFailure::NotOpen(status)) => Err(ApiError::CartNotOpen(status.as_str())),
        Err(LineFailure::Store(error)) => Err(error.into()),
    }
}

/// Shows one of the caller's orders.
#[utoipa::path(
    get, path = "/api/orders/{orderId}", tag = "shop",
    params(("orderId" = String, Path, description = "The order")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Another user's order", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_order(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    PathId(id): PathId,
) -> Result<Json<OrderView>, ApiError> {
    let id = OrderId::parse(&id).map_err(|_| ApiError::OrderNotFound)?;
    tracing::Span::current().record("orderId", id.as_str());
    let order = app.store.order(&id).await?.ok_or(ApiError::OrderNotFound)?;
    if order.user_id != user {
        return Err(ApiError::Forbidden);
    }
    tracing::Span::current().record("cartId", order.cart_id.as_str());
    Ok(Json(OrderView::from(&order)))
}
