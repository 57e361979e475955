//! Every row of the contract's error table, on both databases: status, body,
//! headers, and the log record where the contract names one.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use checkout_service::app::App;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::helpers::*;
use crate::on_both_backends;

/// Text that must never reach a client.
const INTERNAL_WORDS: &[&str] = &[
    "sqlx", "reqwest", "hyper", "src/", ".rs", "panicked", "SELECT", "tokio", "stack",
];

fn assert_no_internal_text(body: &str) {
    for word in INTERNAL_WORDS {
        assert!(!body.contains(word), "response leaks {word:?}: {body}");
    }
}

on_both_backends!(
    async fn missing_checkout_fields_are_all_named(backend) {
        let app = spawn_app(backend).await;
        for (body, missing) in [
            (json!({}), json!(["cartId", "paymentToken", "userId"])),
            (json!({"cartId": "cart_1", "paymentToken": null, "userId": ""}), json!(["paymentToken", "userId"])),
            (json!({"cartId": "cart_1", "userId": "usr_1"}), json!(["paymentToken"])),
        ] {
            let (status, response) = status_and_body(app.post("/api/checkout/complete", "usr_1", body).await).await;
            assert_eq!(status, 400);
            assert_eq!(
                response,
                json!({
                    "error": "MISSING_REQUIRED_FIELDS",
                    "message": "cartId, paymentToken, and userId are all required",
                    "fields": missing,
                })
            );
        }
    }
);

on_both_backends!(
    async fn a_body_that_is_not_a_json_object_is_invalid_json(backend) {
        let app = spawn_app(backend).await;
        for body in ["{\"cartId\": ", "[1, 2]", "\"text\"", "nul"] {
            let response = app
                .client
                .post(app.url("/api/checkout/complete"))
                .bearer_auth(app.token("usr_1"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            let (status, response) = status_and_body(response).await;
            assert_eq!((status, response["error"].as_str()), (400, Some("INVALID_JSON")), "{body}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let response = app
            .client
            .post(app.url("/api/carts"))
            .bearer_auth(app.token("usr_1"))
            .header("content-type", "application/json")
            .body(deep)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "deep nesting is refused, not a crash");
    }
);

on_both_backends!(
    async fn fields_of_the_wrong_type_length_or_range_are_named(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[]).await;
        let cases = [
            ("/api/checkout/complete", json!({"cartId": 7, "paymentToken": "tok_visa", "userId": "usr_1"}), "cartId"),
            (
                "/api/checkout/complete",
                json!({"cartId": "c", "paymentToken": "t".repeat(257), "userId": "usr_1"}),
                "paymentToken",
            ),
            ("/api/checkout/complete", json!({"cartId": "c", "paymentToken": ["t"], "userId": "usr_1"}), "paymentToken"),
            (&format!("/api/carts/{cart}/items"), json!({"sku": "SKU-MUG", "quantity": 0}), "quantity"),
            (&format!("/api/carts/{cart}/items"), json!({"sku": "SKU-MUG", "quantity": 1001}), "quantity"),
            (&format!("/api/carts/{cart}/items"), json!({"sku": "SKU-MUG", "quantity": 2.5}), "quantity"),
            (&format!("/api/carts/{cart}/items"), json!({"sku": "SKU-MUG", "quantity": 1e40}), "quantity"),
            (&format!("/api/carts/{cart}/items"), json!({"sku": 12, "quantity": 1}), "sku"),
            ("/api/carts", json!({"currency": "dollars"}), "currency"),
        ];
        for (path, body, field) in cases {
            let (status, response) = status_and_body(app.post(path, "usr_1", body.clone()).await).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(response["error"], "INVALID_FIELD", "{body}");
            assert_eq!(response["field"], field, "{body}");
        }
        assert_eq!(app.cart("usr_1", &cart).await["items"], json!([]), "nothing changed");
    }
);

on_both_backends!(
    async fn requests_without_a_valid_token_are_unauthenticated(backend) {
        let app = spawn_app(backend).await;
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |claims: Value, secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("encode")
        };
        let unsigned = {
            let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
            let claims = sign(json!({"sub": "usr_1", "exp": now + 600}), JWT_SECRET);
            let payload = claims.split('.').nth(1).expect("payload").to_string();
            format!("{header}.{payload}.")
        };
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no header", None),
            ("not a JWT", Some("Bearer not-a-token".into())),
            ("basic auth", Some("Basic dXNyXzE6cGFzcw==".into())),
            ("another key", Some(format!("Bearer {}", sign(json!({"sub": "usr_1", "exp": now + 600}), "another-secret-another-secret-123")))),
            ("expired", Some(format!("Bearer {}", sign(json!({"sub": "usr_1", "exp": now - 5}), JWT_SECRET)))),
            ("no exp", Some(format!("Bearer {}", sign(json!({"sub": "usr_1"}), JWT_SECRET)))),
            ("alg none", Some(format!("Bearer {unsigned}"))),
        ];
        for (case, authorization) in cases {
            for (method, path) in [("POST", "/api/carts"), ("GET", "/api/carts/cart_x"), ("POST", "/api/checkout/complete")] {
                let mut request = app.client.request(method.parse().expect("method"), app.url(path)).json(&json!({}));
                if let Some(value) = &authorization {
                    request = request.header("authorization", value);
                }
                let (status, body) = status_and_body(request.send().await.expect("request")).await;
                assert_eq!((status, body["error"].as_str()), (401, Some("UNAUTHENTICATED")), "{case} {path}");
            }
        }
        let public = app.client.get(app.url("/api/products")).send().await.expect("request");
        assert_eq!(public.status(), 200, "the catalog needs no token");
    }
);

on_both_backends!(
    async fn nobody_acts_on_another_users_behalf_or_carts(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_owner", &[("SKU-MUG", 1)]).await;
        let (status, body) = status_and_body(app.checkout("usr_owner", &cart, "tok_visa").await).await;
        assert_eq!(status, 201);
        let order = body["orderId"].as_str().expect("orderId").to_string();
        let other = app.cart_with("usr_owner", &[("SKU-MUG", 1)]).await;

        let body_for_owner = json!({"cartId": other, "paymentToken": "tok_visa", "userId": "usr_owner"});
        let forbidden = [
            app.post("/api/checkout/complete", "usr_thief", body_for_owner).await,
            app.checkout("usr_thief", &other, "tok_visa").await,
            app.get(&format!("/api/carts/{other}"), "usr_thief").await,
            app.post(&format!("/api/carts/{other}/items"), "usr_thief", json!({"sku": "SKU-MUG", "quantity": 1})).await,
            app.get(&format!("/api/orders/{order}"), "usr_thief").await,
        ];
        for response in forbidden {
            let (status, body) = status_and_body(response).await;
            assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
        }
        assert_eq!(app.cart("usr_owner", &other).await["status"], "OPEN");
        assert_eq!(app.cart("usr_owner", &other).await["items"][0]["quantity"], 1);
    }
);

on_both_backends!(
    async fn unknown_things_are_404_with_their_own_codes(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[]).await;
        let cases = [
            (app.get("/api/nothing-here", "usr_1").await, "NOT_FOUND"),
            (app.get("/api/carts/cart_missing", "usr_1").await, "CART_NOT_FOUND"),
            (app.checkout("usr_1", "cart_missing", "tok_visa").await, "CART_NOT_FOUND"),
            (app.get("/api/orders/ord_missing", "usr_1").await, "ORDER_NOT_FOUND"),
            (app.post(&format!("/api/carts/{cart}/items"), "usr_1", json!({"sku": "SKU-NOPE", "quantity": 1})).await, "UNKNOWN_SKU"),
        ];
        for (response, code) in cases {
            let (status, body) = status_and_body(response).await;
            assert_eq!((status, body["error"].as_str()), (404, Some(code)));
        }
    }
);

on_both_backends!(
    async fn a_wrong_method_is_405(backend) {
        let app = spawn_app(backend).await;
        for (method, path) in [("DELETE", "/api/products"), ("PUT", "/api/checkout/complete"), ("POST", "/health")] {
            let response = app
                .client
                .request(method.parse().expect("method"), app.url(path))
                .send()
                .await
                .expect("request");
            let (status, body) = status_and_body(response).await;
            assert_eq!((status, body["error"].as_str()), (405, Some("METHOD_NOT_ALLOWED")), "{method} {path}");
        }
    }
);

on_both_backends!(
    async fn checking_out_an_empty_cart_is_409(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[]).await;
        let (status, body) = status_and_body(app.checkout("usr_1", &cart, "tok_visa").await).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CART_EMPTY")));
        assert_eq!(app.cart("usr_1", &cart).await["status"], "OPEN");
    }
);

on_both_backends!(
    async fn bodies_over_the_limit_are_413_and_non_json_bodies_415(backend) {
        let app = spawn_app_with(backend, |s| s.set("MAX_BODY_BYTES", "512")).await;
        let big = json!({"cartId": "x".repeat(600), "paymentToken": "tok_visa", "userId": "usr_1"});
        let (status, body) = status_and_body(app.post("/api/checkout/complete", "usr_1", big).await).await;
        assert_eq!((status, body["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20).map(|_| Ok(vec![b' '; 100])).collect();
        // Its own client: the server closes a connection whose body it refused
        // unread, and a later request must not pick that connection from the pool.
        let streamed = reqwest::Client::new()
            .post(app.url("/api/carts"))
            .bearer_auth(app.token("usr_1"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
            .send()
            .await
            .expect("request");
        assert_eq!(streamed.status(), 413, "a body without Content-Length is measured as it arrives");
        let text = app
            .client
            .post(app.url("/api/checkout/complete"))
            .bearer_auth(app.token("usr_1"))
            .header("content-type", "text/plain")
            .body("cartId=1")
            .send()
            .await
            .expect("request");
        let (status, body) = status_and_body(text).await;
        assert_eq!((status, body["error"].as_str()), (415, Some("UNSUPPORTED_MEDIA_TYPE")));
        let untyped = app
            .client
            .post(app.url("/api/checkout/complete"))
            .bearer_auth(app.token("usr_1"))
            .body("{}")
            .send()
            .await
            .expect("request");
        assert_eq!(untyped.status(), 415, "a body without any content type");
    }
);

on_both_backends!(
    async fn a_panic_is_a_500_with_an_error_id_and_exactly_one_error_record(backend) {
        let routes = axum::Router::<Arc<App>>::new().route(
            "/api/test/explode",
            get(|| async {
                let user: Option<&str> = std::hint::black_box(None);
                user.expect("user session expired mid-checkout").len().to_string()
            }),
        );
        let app = spawn_app_routed(backend, |_| {}, routes).await;
        let response = app
            .client
            .get(app.url("/api/test/explode"))
            .header("user-agent", "checkout-tests/1.0")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 500);
        let error_id = response.headers()["x-error-id"].to_str().expect("ascii").to_string();
        let text = response.text().await.expect("body");
        assert_no_internal_text(&text);
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"], "INTERNAL_SERVER_ERROR");
        assert_eq!(body["errorId"], error_id.as_str());
        let pattern_ok = error_id.starts_with("ERR-") && error_id.len() == "ERR-1732845600000-K7X2MN".len();
        assert!(pattern_ok, "{error_id}");
        let records: Vec<_> = app.logs.records().into_iter().filter(|r| r["errorId"] == error_id.as_str()).collect();
        let errors: Vec<_> = records.iter().filter(|r| r["level"] == "ERROR").collect();
        assert_eq!(errors.len(), 1, "{records:?}");
        let record = errors[0];
        assert_eq!(record["errorClass"], "Panic");
        assert_eq!(record["method"], "GET");
        assert_eq!(record["url"], "/api/test/explode");
        assert_eq!(record["userAgent"], "checkout-tests/1.0");
        assert_eq!(record["endpoint"], "GET /api/test/explode");
        let chain = record["errorChain"].to_string();
        assert!(chain.contains("user session expired mid-checkout") && chain.contains("errors.rs"), "{chain}");
        // The server keeps serving.
        assert_eq!(app.client.get(app.url("/api/products")).send().await.expect("request").status(), 200);
    }
);

/// Holds the database's write lock (SQLite) or an exclusive lock on `carts`
/// (PostgreSQL) from another connection until dropped.
async fn lock_the_database(db: &TestDb) -> Box<dyn std::any::Any + Send> {
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.expect("lock");
            Box::new(conn)
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
            sqlx::query("LOCK TABLE carts IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .expect("lock");
            Box::new(conn)
        }
    }
}

on_both_backends!(
    async fn a_locked_database_answers_503_database_within_its_bounds(backend) {
        let app = spawn_app_with(backend, |s| {
            s.set("DB_STATEMENT_TIMEOUT_MS", "300");
            s.set("DB_ACQUIRE_TIMEOUT_MS", "300");
        })
        .await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        let lock = lock_the_database(&app.db).await;
        let started = std::time::Instant::now();
        let response = app.post("/api/carts", "usr_1", json!({})).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let error_id = response.headers()["x-error-id"].to_str().expect("ascii").to_string();
        let text = response.text().await.expect("body");
        assert_no_internal_text(&text);
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["dependency"], "database");
        assert_eq!(body["errorId"], error_id.as_str());
        let records: Vec<_> = app.records_at("ERROR").into_iter().filter(|r| r["errorId"] == error_id.as_str()).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["dependency"], "database");
        // A checkout's writes take the other path on SQLite (the writer thread):
        // the same bounded 503, and nothing charged.
        let started = std::time::Instant::now();
        let (status, body) = status_and_body(app.checkout("usr_1", &cart, "tok_visa").await).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!((status, body["dependency"].as_str()), (503, Some("database")), "{body}");
        assert_eq!(app.ledger().await["charges"].as_array().map(Vec::len), Some(0));
        drop(lock);
        assert_eq!(app.post("/api/carts", "usr_1", json!({})).await.status(), 201, "recovers without a restart");
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 201, "and so do checkouts");
    }
);

on_both_backends!(
    async fn load_beyond_max_in_flight_is_shed_at_once(backend) {
        let app = spawn_app_with(backend, |s| s.set("MAX_IN_FLIGHT", "1")).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        app.payment_faults(json!({"latencyMs": 1500})).await;
        let (slow, shed) = tokio::join!(app.checkout("usr_1", &cart, "tok_visa"), async {
            wait_for_sandbox_requests(&app.sandbox.payment_url(), "POST /v1/charges", 1).await;
            let started = std::time::Instant::now();
            let response = app.client.get(app.url("/api/products")).send().await.expect("request");
            (response, started.elapsed())
        });
        assert_eq!(slow.status(), 201);
        let (shed, waited) = shed;
        assert!(waited < Duration::from_millis(400), "shed immediately, not queued: {waited:?}");
        let (status, body) = status_and_body(shed).await;
        assert_eq!((status, body["dependency"].as_str()), (503, Some("server")));
        let health = app.client.get(app.url("/health/live")).send().await.expect("request");
        assert_eq!(health.status(), 200);
    }
);

on_both_backends!(
    async fn a_request_past_request_timeout_gets_503_server(backend) {
        let app = spawn_app_with(backend, |s| s.set("REQUEST_TIMEOUT_MS", "400")).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        app.payment_faults(json!({"latencyMs": 2000})).await;
        let started = std::time::Instant::now();
        let (status, body) = status_and_body(app.checkout("usr_1", &cart, "tok_visa").await).await;
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert_eq!((status, body["dependency"].as_str()), (503, Some("server")));
        assert!(body["errorId"].is_string());
    }
);

on_both_backends!(
    async fn every_response_carries_a_request_id_and_echoes_a_sane_one(backend) {
        let app = spawn_app(backend).await;
        let generated = app.client.get(app.url("/api/products")).send().await.expect("request");
        let id = generated.headers()["x-request-id"].to_str().expect("ascii").to_string();
        assert!(id.starts_with("req_"), "{id}");
        let echoed = app
            .client
            .get(app.url("/api/nope"))
            .header("x-request-id", "client-trace-42")
            .send()
            .await
            .expect("request");
        assert_eq!(echoed.headers()["x-request-id"], "client-trace-42");
        let replaced = app
            .client
            .get(app.url("/api/products"))
            .header("x-request-id", "x".repeat(500))
            .send()
            .await
            .expect("request");
        assert!(replaced.headers()["x-request-id"].to_str().expect("ascii").starts_with("req_"));
        let access: Vec<_> = app.events("access").into_iter().filter(|r| r["requestId"] == "client-trace-42").collect();
        assert_eq!(access.len(), 1, "one access record per request");
        assert_eq!(access[0]["status"], 404);
        assert_eq!(access[0]["endpoint"], "GET unmatched");
        let took = access[0]["durationMs"].as_u64().expect("durationMs is a number");
        assert_eq!(access[0]["message"], format!("GET unmatched 404 in {took}ms"));
    }
);

on_both_backends!(
    async fn secrets_and_payment_tokens_never_reach_a_log_line_or_a_response(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        let mut bodies = Vec::new();
        bodies.push(app.checkout("usr_456", &cart, "tok_visa_secret_4242").await.text().await.expect("body"));
        bodies.push(app.checkout("usr_456", &cart, "tok_chargeDeclined").await.text().await.expect("body"));
        app.payment_faults(json!({"malformed": true})).await;
        let other = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        bodies.push(app.checkout("usr_456", &other, "tok_visa_secret_5555").await.text().await.expect("body"));
        let long = format!("tok_visa_secret_{}", "9".repeat(300));
        bodies.push(app.checkout("usr_456", &other, &long).await.text().await.expect("body"));
        let token = app.token("usr_456");
        let logs = app.logs.lines().join("\n");
        for secret in [JWT_SECRET, API_KEY, "tok_visa_secret", "tok_chargeDeclined", token.as_str(), "Bearer"] {
            assert!(!logs.contains(secret), "{secret:?} appears in the logs");
            for body in &bodies {
                assert!(!body.contains(secret), "{secret:?} appears in a response: {body}");
            }
        }
        assert!(logs.contains("usr_456"), "the logs do carry request context");
    }
);
