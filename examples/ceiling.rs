//! The benchmark's ceiling: the smallest axum server that answers the "reject"
//! request exactly as checkout-service does (400, JSON, an `X-Request-Id`, the same
//! body bytes) and does nothing else. What it serves on one core is the most this
//! machine can serve; `scripts/bench` reports every scenario as a share of it.
//!
//! Usage: ceiling PORT

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

const BODY: &str = r#"{"error":"MISSING_REQUIRED_FIELDS","message":"cartId, paymentToken, and userId are all required","fields":["cartId","userId"]}"#;

async fn reject() -> Response {
    let mut response = (StatusCode::BAD_REQUEST, BODY).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("req_0000000000000000000a"));
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(3999);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let app = Router::new().route("/api/checkout/complete", post(reject));
    axum::serve(listener, app).await
}
