//! The benchmark's checkout ceiling: the network work of a checkout and nothing
//! else. For every request it reserves the stock, charges the card, answers 201
//! and commits the stock, over HTTP/1.1 keep-alive with the service's own client
//! stack, to the same sandbox dependencies checkout-service uses, with no
//! database, no token, no validation, no records and no metrics. What it serves on one core is the most any checkout making the
//! contract's calls could serve there; `scripts/bench` reports the checkouts as a
//! share of it, measured in the same run.
//!
//! Usage: checkout_ceiling PORT PAYMENT_URL INVENTORY_URL PAYMENT_API_KEY

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use checkout_service::client::{Client, IDEMPOTENCY_KEY, Request};
use tokio::time::{Duration, Instant};

struct Ceiling {
    client: Client,
    payment: String,
    inventory: String,
    bearer: HeaderValue,
    next: AtomicU64,
}

impl Ceiling {
    /// One call, its answer read to the end; the status, or `None` if it failed.
    async fn call(&self, url: String, body: String, key: Option<&str>) -> Option<StatusCode> {
        let mut request = Request::post(url.parse().ok()?)
            .header(header::CONTENT_TYPE, "application/json")
            .bearer(&self.bearer)
            .body(body);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        let answer = self
            .client
            .call(request, Instant::now() + Duration::from_secs(10))
            .await
            .ok()?;
        Some(answer.status)
    }
}

async fn checkout(State(ceiling): State<Arc<Ceiling>>, _body: Bytes) -> Response {
    let id = format!("att_ceiling{:016}", ceiling.next.fetch_add(1, Ordering::Relaxed));
    let reservation = format!(r#"{{"reservationId":"{id}","items":[{{"sku":"SKU-TSHIRT","quantity":1}}]}}"#);
    let reserved = ceiling
        .call(format!("{}/v1/reservations", ceiling.inventory), reservation, None)
        .await;
    if reserved != Some(StatusCode::CREATED) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let charge = r#"{"amountCents":2500,"currency":"USD","token":"tok_visa"}"#.to_string();
    let charged = ceiling
        .call(format!("{}/v1/charges", ceiling.payment), charge, Some(&id))
        .await;
    if charged != Some(StatusCode::OK) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let commit = format!("{}/v1/reservations/{id}/commit", ceiling.inventory);
    let committing = ceiling.clone();
    tokio::spawn(async move { committing.call(commit, String::new(), None).await });
    let body = format!(
        r#"{{"orderId":"ord_{id}","transactionId":"txn_ceiling","status":"CONFIRMED","totalCents":2500,"currency":"USD"}}"#
    );
    let mut response = (StatusCode::CREATED, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, payment, inventory, key] = &args[..] else {
        eprintln!("usage: checkout_ceiling PORT PAYMENT_URL INVENTORY_URL PAYMENT_API_KEY");
        std::process::exit(2);
    };
    let (Ok(port), Ok(bearer)) = (port.parse::<u16>(), HeaderValue::from_str(&format!("Bearer {key}"))) else {
        eprintln!("usage: checkout_ceiling PORT PAYMENT_URL INVENTORY_URL PAYMENT_API_KEY");
        std::process::exit(2);
    };
    // The service's own client stack, with as many idle connections as it keeps per
    // dependency.
    let Ok(client) = Client::pooled(Duration::from_secs(1), Duration::from_secs(30), 128) else {
        eprintln!("cannot build an HTTP client");
        std::process::exit(1);
    };
    let ceiling = Arc::new(Ceiling {
        client,
        payment: payment.trim_end_matches('/').to_string(),
        inventory: inventory.trim_end_matches('/').to_string(),
        bearer,
        next: AtomicU64::new(1),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let app = Router::new()
        .route("/api/checkout/complete", post(checkout))
        .with_state(ceiling);
    axum::serve(listener, app).await
}
