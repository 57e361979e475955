//! Bad input never becomes a 5xx or a change: random bytes, arbitrary JSON (with
//! the API's own field names mixed in), huge numbers, unicode and deep nesting are
//! thrown at every JSON endpoint. Each answer must be a 4xx in the contract's error
//! shape, and the database and the gateway's ledger must be exactly as before.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

use crate::helpers::*;

#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
    Text(String),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cartId".to_string()),
        Just("paymentToken".to_string()),
        Just("userId".to_string()),
        Just("sku".to_string()),
        Just("quantity".to_string()),
        Just("currency".to_string()),
        ".{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,300}".prop_map(Value::String),
        Just(json!("SKU-MUG")),
        Just(json!("usr_fuzz")),
        Just(json!(0)),
        Just(json!(1001)),
        Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        (4usize..400).prop_map(|n| format!("{{\"sku\":\"SKU-MUG\",\"quantity\":{}}}", "9".repeat(n))),
        (1usize..6).prop_map(|n| format!("{{\"quantity\":1e{}}}", "9".repeat(n))),
        (1usize..50_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        (1usize..50_000).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))),
        "\\PC{0,200}".prop_map(|s| format!("{{\"cartId\":\"{s}\",\"paymentToken\":\"{s}\",\"userId\":\"{s}\"}}")),
        Just("{\"cartId\": \"\\ud800\"}".to_string()),
        Just("\u{feff}{}".to_string()),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => json_value().prop_map(Body::Json),
        2 => text().prop_map(Body::Text),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Body::Bytes),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(Some("application/problem+json; charset=utf-8")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ]
}

/// What must not change: rows and units in the database, and charges at the gateway.
async fn snapshot(app: &TestApp) -> (i64, i64, i64, i64, usize) {
    (
        count(&app.db, "SELECT COUNT(*) FROM carts").await,
        count(&app.db, "SELECT COALESCE(SUM(quantity), 0) FROM cart_items").await,
        count(&app.db, "SELECT COUNT(*) FROM checkout_attempts").await,
        count(&app.db, "SELECT COUNT(*) FROM orders").await,
        app.ledger().await["charges"].as_array().map_or(0, Vec::len),
    )
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime.block_on(spawn_app_with(Backend::Sqlite, |s| s.set("MAX_BODY_BYTES", "65536")));
    let cart = runtime.block_on(app.cart_with("usr_fuzz", &[("SKU-MUG", 1)]));
    let paths = [
        "/api/carts".to_string(),
        format!("/api/carts/{cart}/items"),
        "/api/checkout/complete".to_string(),
    ];
    let token = app.token("usr_fuzz");
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&(0usize..3, body(), content_type()), |(which, body, content_type)| {
            let path = &paths[which];
            runtime.block_on(async {
                let before = snapshot(&app).await;
                let bytes = match &body {
                    Body::Json(value) => serde_json::to_vec(value).expect("serializable"),
                    Body::Bytes(bytes) => bytes.clone(),
                    Body::Text(text) => text.clone().into_bytes(),
                };
                let mut request = app.client.post(app.url(path)).bearer_auth(&token).body(bytes);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                let response = request.send().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                *seen.lock().expect("tally").entry(status).or_default() += 1;
                if which == 0 && status == 201 {
                    // `{}` and the like legitimately create a cart.
                    return Ok(());
                }
                prop_assert!((400..500).contains(&status), "{path} answered {status}: {text}");
                let error: Value =
                    serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert!(error["error"].is_string() && error["message"].is_string(), "{text}");
                let after = snapshot(&app).await;
                prop_assert_eq!(before, after, "{} changed the state: {}", path, text);
                Ok(())
            })
        })
        .expect("every bad input is refused cleanly");
    report(
        "fuzz",
        &format!(
            "fuzz test: 300 random bodies against 3 JSON endpoints; statuses {:?}",
            seen.lock().expect("tally")
        ),
    );
    assert!(app.records_at("ERROR").is_empty(), "no bad input caused a server error");
}
