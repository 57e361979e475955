//! The HTTP API: the router, built from annotated handlers so the OpenAPI document
//! is generated from the same code that serves, and the middleware around it.

pub mod api;
pub mod checkout;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod shop;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use tracing::Dispatch;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "checkout-service",
        description = "A checkout API that fails honestly: 4xx for the client's mistakes, 503 with Retry-After \
                       when a dependency is down, 500 with an error ID for real bugs.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "shop", description = "Products, carts and orders"),
        (name = "checkout", description = "Completing a purchase"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every route of the API, with its OpenAPI description.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(shop::list_products))
        .routes(routes!(shop::create_cart))
        .routes(routes!(shop::get_cart))
        .routes(routes!(shop::add_item))
        .routes(routes!(shop::set_quantity, shop::remove_item))
        .routes(routes!(checkout::complete))
        .routes(routes!(webhooks::stripe))
        .routes(routes!(shop::get_order))
        .routes(routes!(ops::health))
        .routes(routes!(ops::live))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::alerts))
        .routes(routes!(ops::status_page))
        .routes(routes!(ops::status_data))
}

/// The OpenAPI document, as served at `/openapi.json`, rendered once.
pub fn openapi_json() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = routes().split_for_parts();
        let mut document = serde_json::to_value(&api).expect("the API document is made of strings, numbers and maps");
        openapi::complete(&mut document);
        serde_json::to_string_pretty(&document).expect("a JSON value serializes")
    })
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The service's router, logging through `dispatch`.
pub fn router(app: Arc<App>, dispatch: Dispatch) -> Router {
    let (router, _) = routes().split_for_parts();
    with_middleware(router, app, dispatch)
}

/// Wraps `router` in the service's middleware: the API's routes in production, and
/// extra routes in tests that need a handler to fail in ways the API never should.
pub fn with_middleware(router: Router<Arc<App>>, app: Arc<App>, dispatch: Dispatch) -> Router {
    middleware::install_panic_hook();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(
            middleware::Pipeline {
                app: app.clone(),
                dispatch,
            },
            middleware::pipeline,
        ))
        .with_state(app)
}
