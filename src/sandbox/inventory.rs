//! The sandbox inventory service: stock from the catalog, all-or-nothing
//! reservations that are idempotent on their ID, then committed or released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::faults::{self, Faults};
use super::payment::control_router;
use crate::catalog::Catalog;

#[derive(Clone, Copy, Default)]
struct Stock {
    available: i64,
    reserved: i64,
    committed: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReservationState {
    Held,
    Committed,
    Released,
}

impl ReservationState {
    fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
        }
    }
}

struct Reservation {
    items: Vec<(String, i64)>,
    state: ReservationState,
}

#[derive(Default)]
struct Inventory {
    stock: HashMap<String, Stock>,
    reservations: HashMap<String, Reservation>,
}

type Shared = Arc<Mutex<Inventory>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inventory> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn reservation_json(id: &str, reservation: &Reservation) -> Value {
    let items: Vec<Value> = reservation
        .items
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    json!({"reservationId": id, "status": reservation.state.as_str(), "items": items})
}

async fn reserve(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = request
        .get("reservationId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let items: Option<Vec<(String, i64)>> = request.get("items").and_then(Value::as_array).map(|items| {
        items
            .iter()
            .filter_map(|item| {
                let sku = item.get("sku")?.as_str()?.to_string();
                let quantity = item.get("quantity")?.as_i64().filter(|q| *q > 0)?;
                Some((sku, quantity))
            })
            .collect()
    });
    let (Some(id), Some(items)) = (id, items) else {
        return error(
            StatusCode::BAD_REQUEST,
            "reservationId and items [{sku, quantity}] are required",
        );
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "items must not be empty");
    }
    let mut inventory = lock(&shared);
    if let Some(existing) = inventory.reservations.get(id) {
        if existing.state == ReservationState::Released {
            return (
                StatusCode::CONFLICT,
                Json(json!({"error": "reservation was released", "unavailableSkus": []})),
            )
                .into_response();
        }
        return (StatusCode::CREATED, Json(reservation_json(id, existing))).into_response();
    }
    let mut wanted: HashMap<&str, i64> = HashMap::new();
    for (sku, quantity) in &items {
        *wanted.entry(sku.as_str()).or_default() += quantity;
    }
    let mut unavailable: Vec<String> = wanted
        .iter()
        .filter(|(sku, quantity)| inventory.stock.get(**sku).is_none_or(|s| s.available < **quantity))
        .map(|(sku, _)| (*sku).to_string())
        .collect();
    if !unavailable.is_empty() {
        unavailable.sort();
        return (StatusCode::CONFLICT, Json(json!({"unavailableSkus": unavailable}))).into_response();
    }
    for (sku, quantity) in &wanted {
        if let Some(stock) = inventory.stock.get_mut(*sku) {
            stock.available -= quantity;
            stock.reserved += quantity;
        }
    }
    let reservation = Reservation {
        items,
        state: ReservationState::Held,
    };
    let response = (StatusCode::CREATED, Json(reservation_json(id, &reservation))).into_response();
    inventory.reservations.insert(id.to_string(), reservation);
    response
}

async fn commit(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let mut inventory = lock(&shared);
    let Inventory { stock, reservations } = &mut *inventory;
    let Some(reservation) = reservations.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "no such reservation");
    };
    match reservation.state {
        ReservationState::Released => return error(StatusCode::CONFLICT, "reservation was released"),
        ReservationState::Committed => {}
        ReservationState::Held => {
            for (sku, quantity) in &reservation.items {
                if let Some(level) = stock.get_mut(sku) {
                    level.reserved -= quantity;
                    level.committed += quantity;
                }
            }
            reservation.state = ReservationState::Committed;
        }
    }
    Json(reservation_json(&id, reservation)).into_response()
}

async fn release(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let mut inventory = lock(&shared);
    let Inventory { stock, reservations } = &mut *inventory;
    let Some(reservation) = reservations.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "no such reservation");
    };
    match reservation.state {
        ReservationState::Committed => return error(StatusCode::CONFLICT, "reservation was committed"),
        ReservationState::Released => {}
        ReservationState::Held => {
            for (sku, quantity) in &reservation.items {
                if let Some(level) = stock.get_mut(sku) {
                    level.reserved -= quantity;
                    level.available += quantity;
                }
            }
            reservation.state = ReservationState::Released;
        }
    }
    Json(reservation_json(&id, reservation)).into_response()
}

async fn stock(State(shared): State<Shared>, Path(sku): Path<String>) -> Response {
    let inventory = lock(&shared);
    match inventory.stock.get(&sku) {
        Some(level) => Json(json!({
            "sku": sku,
            "available": level.available,
            "reserved": level.reserved,
            "committed": level.committed,
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "no such sku"),
    }
}

/// The inventory's routes, stocked from `catalog`.
pub fn router(catalog: &Catalog, faults: Arc<Faults>) -> Router {
    let inventory = Inventory {
        stock: catalog
            .stock
            .iter()
            .map(|(sku, units)| {
                (
                    sku.as_str().to_string(),
                    Stock {
                        available: *units,
                        ..Stock::default()
                    },
                )
            })
            .collect(),
        reservations: HashMap::new(),
    };
    let shared: Shared = Arc::new(Mutex::new(inventory));
    Router::new()
        .route("/v1/reservations", post(reserve))
        .route("/v1/reservations/{id}/commit", post(commit))
        .route("/v1/reservations/{id}", axum::routing::delete(release))
        .route("/v1/stock/{sku}", get(stock))
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(faults.clone(), faults::inject))
        .merge(control_router(faults))
}
