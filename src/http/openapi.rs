//! What the OpenAPI document says beyond what the route annotations give it
//! (DESIGN §3): the `error` codes each response can carry, as an enum; the
//! `X-Request-Id`, `X-Error-Id` and `Retry-After` headers; and the shapes of the
//! operational documents (`/health`, `/alerts`, `/status/data`), which are built as
//! JSON values in the handlers.

use serde_json::{Map, Value, json};

/// The `error` codes a status carries (DESIGN §3's table); a route may narrow them
/// ([`NARROWED`]).
pub const CODES: &[(u16, &[&str])] = &[
    (400, &["MISSING_REQUIRED_FIELDS", "INVALID_JSON", "INVALID_FIELD"]),
    (401, &["UNAUTHENTICATED"]),
    (402, &["PAYMENT_DECLINED"]),
    (403, &["FORBIDDEN"]),
    (404, &["NOT_FOUND", "CART_NOT_FOUND", "ORDER_NOT_FOUND", "UNKNOWN_SKU"]),
    (405, &["METHOD_NOT_ALLOWED"]),
    (408, &["REQUEST_TIMEOUT"]),
    (
        409,
        &[
            "CART_EMPTY",
            "CHECKOUT_IN_PROGRESS",
            "CART_NOT_OPEN",
            "CURRENCY_MISMATCH",
            "CART_LIMIT_EXCEEDED",
            "INVENTORY_CONFLICT",
        ],
    ),
    (413, &["PAYLOAD_TOO_LARGE"]),
    (415, &["UNSUPPORTED_MEDIA_TYPE"]),
    (422, &["IDEMPOTENCY_KEY_REUSED"]),
    (500, &["INTERNAL_SERVER_ERROR"]),
    (503, &["SERVICE_TEMPORARILY_UNAVAILABLE"]),
];

/// Routes whose answers of a status carry fewer codes than [`CODES`] lists: only
/// the checkout's body has required fields of its own.
const NARROWED: &[(&str, u16, &[&str])] = &[
    ("create_cart", 400, &["INVALID_JSON", "INVALID_FIELD"]),
    ("add_item", 400, &["INVALID_JSON", "INVALID_FIELD"]),
    ("set_quantity", 400, &["INVALID_JSON", "INVALID_FIELD"]),
    ("stripe", 400, &["INVALID_JSON", "INVALID_FIELD"]),
    ("get_order", 404, &["ORDER_NOT_FOUND"]),
    ("get_cart", 404, &["CART_NOT_FOUND"]),
];

/// The codes `operation` can answer with `status`.
pub fn codes(operation: &str, status: u16) -> Option<&'static [&'static str]> {
    NARROWED
        .iter()
        .find(|(op, s, _)| *op == operation && *s == status)
        .map(|(_, _, codes)| *codes)
        .or_else(|| CODES.iter().find(|(s, _)| *s == status).map(|(_, codes)| *codes))
}

/// Adds the error enums, the headers and the operational schemas to `document`.
pub fn complete(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    for (name, schema) in operational_schemas() {
        schemas[name] = schema;
    }
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(methods) = item.as_object_mut() else {
            continue;
        };
        for operation in methods.values_mut() {
            let id = operation["operationId"].as_str().unwrap_or_default().to_string();
            let Some(responses) = operation["responses"].as_object_mut() else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let Ok(status) = status.parse::<u16>() else {
                    continue;
                };
                describe_response(path, &id, status, response);
            }
        }
    }
}

fn describe_response(path: &str, operation: &str, status: u16, response: &mut Value) {
    let mut headers = Map::new();
    headers.insert(
        "X-Request-Id".into(),
        header("The request's ID: the one the client sent, or one made for it"),
    );
    if status >= 500 {
        headers.insert(
            "X-Error-Id".into(),
            json!({
                "description": "The error's ID (ERR-<unix ms>-<6 chars>), in the body and in the server's ERROR record",
                "schema": {"type": "string", "pattern": "^ERR-[0-9]+-[0-9A-Z]{6}$"},
            }),
        );
    }
    if status == 503 && path != "/health" && path != "/health/ready" {
        headers.insert(
            "Retry-After".into(),
            json!({
                "description": "Seconds until a retry makes sense (as retryAfterSeconds)",
                "schema": {"type": "integer", "minimum": 1},
            }),
        );
    }
    response["headers"] = Value::Object(headers);
    let Some(content) = response
        .get_mut("content")
        .and_then(|c| c.get_mut("application/json"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let refers_to_errors =
        content.get("schema").and_then(|s| s.get("$ref")) == Some(&json!("#/components/schemas/ErrorBody"));
    if refers_to_errors && let Some(codes) = codes(operation, status) {
        content.insert(
            "schema".into(),
            json!({
                "allOf": [
                    {"$ref": "#/components/schemas/ErrorBody"},
                    {"type": "object", "properties": {"error": {"type": "string", "enum": codes}}},
                ]
            }),
        );
    }
    let typed = match path {
        "/health" | "/health/ready" => Some("Health"),
        "/alerts" => Some("Alerts"),
        "/status/data" => Some("StatusData"),
        _ => None,
    };
    if let Some(name) = typed {
        content.insert("schema".into(), json!({"$ref": format!("#/components/schemas/{name}")}));
    }
}

fn header(description: &str) -> Value {
    json!({"description": description, "schema": {"type": "string"}})
}

/// `/health`, `/alerts` and `/status/data`, as the handlers build them.
fn operational_schemas() -> Vec<(&'static str, Value)> {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let health = json!({
        "type": "object",
        "required": ["status", "db", "config", "circuitBreakers"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"],
                "description": "degraded (200): a circuit is open; unhealthy (503): this instance should get no traffic"},
            "db": {"type": "string", "enum": ["connected", "unreachable"]},
            "config": {"type": "string", "enum": ["loaded"]},
            "memoryUsagePct": {"type": ["integer", "null"], "minimum": 0},
            "circuitBreakers": {"type": "object",
                "additionalProperties": {"type": "string", "enum": ["CLOSED", "OPEN", "HALF_OPEN"]}},
            "degradedReasons": strings,
            "reasons": strings,
            "error": {"type": "string", "description": "The reasons, in one line"},
            "draining": {"type": "boolean"},
        },
    });
    let alert = json!({
        "type": "object",
        "required": ["name", "severity", "state", "value", "threshold", "since"],
        "properties": {
            "name": {"type": "string"},
            "severity": {"type": "string", "enum": ["ticket", "page"]},
            "state": {"type": "string", "enum": ["firing", "inactive"]},
            "value": {"type": ["number", "null"]},
            "threshold": {"type": ["number", "null"]},
            "since": {"type": ["string", "null"], "format": "date-time"},
        },
    });
    let alerts = json!({
        "type": "object",
        "required": ["alerts"],
        "properties": {"alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}},
    });
    let error_group = json!({
        "type": "object",
        "properties": {
            "errorClass": {"type": "string"},
            "dependency": {"type": ["string", "null"]},
            "count": {"type": "integer", "minimum": 1},
            "sampleErrorId": {"type": "string"},
            "endpoint": {"type": "string"},
            "firstAt": {"type": "string", "format": "date-time"},
            "lastAt": {"type": "string", "format": "date-time"},
        },
    });
    let status_data = json!({
        "type": "object",
        "required": ["service", "version", "generatedAt", "health", "alerts", "window", "series", "recentErrors", "errorGroups"],
        "properties": {
            "service": {"type": "string"},
            "version": {"type": "string"},
            "generatedAt": {"type": "string", "format": "date-time"},
            "health": {"allOf": [
                {"$ref": "#/components/schemas/Health"},
                {"type": "object", "properties": {"healthy": {"type": "boolean"}}},
            ]},
            "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
            "window": {"type": "object", "properties": {
                "seconds": {"type": "integer"},
                "requestsPerSecond": {"type": "number"},
                "errorRatio": {"type": ["number", "null"]},
                "checkoutErrorRatio": {"type": ["number", "null"]},
                "p99Ms": {"type": ["number", "null"]},
            }},
            "series": {"type": "object", "properties": {
                "stepSeconds": {"type": "integer"},
                "points": {"type": "array", "items": {"type": "object", "properties": {
                    "t": {"type": "integer"},
                    "requests": {"type": "integer"},
                    "errors5xx": {"type": "integer"},
                    "p99Ms": {"type": ["number", "null"]},
                }}},
            }},
            "recentErrors": {"type": "array", "items": {"type": "object", "properties": {
                "errorId": {"type": "string"},
                "errorClass": {"type": "string"},
                "endpoint": {"type": "string"},
                "status": {"type": "integer"},
                "dependency": {"type": ["string", "null"]},
                "at": {"type": "string", "format": "date-time"},
            }}},
            "errorGroups": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorGroup"}},
        },
    });
    vec![
        ("Health", health),
        ("Alert", alert),
        ("Alerts", alerts),
        ("ErrorGroup", error_group),
        ("StatusData", status_data),
    ]
}
