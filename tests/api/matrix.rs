//! DESIGN §3's classification, case by case: each status and body a dependency can
//! answer, from the payment gateway and from the inventory service, and what the
//! client, the ERROR record and the breaker make of it.

use serde_json::{Value, json};

use crate::helpers::*;

/// One answer of a dependency and what it must come to.
struct Case {
    faults: Value,
    status: u16,
    error_class: &'static str,
    retry_after: Option<&'static str>,
    /// Whether it counts toward the breaker (which opens at one failure here).
    opens: bool,
}

fn cases() -> Vec<Case> {
    let case = |faults: Value, status, error_class, retry_after, opens| Case {
        faults,
        status,
        error_class,
        retry_after,
        opens,
    };
    vec![
        case(
            json!({"errorRate": 1.0, "errorStatus": 503, "retryAfterSeconds": 7}),
            503,
            "UpstreamServerError",
            Some("7"),
            true,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 429, "retryAfterSeconds": 9}),
            503,
            "UpstreamOverloaded",
            Some("9"),
            true,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 500}),
            503,
            "UpstreamServerError",
            Some("1"),
            true,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 502}),
            503,
            "UpstreamServerError",
            Some("1"),
            true,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 408}),
            503,
            "UpstreamOverloaded",
            Some("1"),
            true,
        ),
        case(
            json!({"malformed": true}),
            503,
            "UpstreamMalformedResponse",
            Some("1"),
            true,
        ),
        case(
            json!({"oversized": true}),
            503,
            "UpstreamMalformedResponse",
            Some("1"),
            true,
        ),
        case(json!({"refuse": true}), 503, "UpstreamConnectionLost", Some("1"), true),
        case(
            json!({"errorRate": 1.0, "errorStatus": 401}),
            500,
            "UpstreamAuthError",
            None,
            false,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 403}),
            500,
            "UpstreamAuthError",
            None,
            false,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 404}),
            500,
            "UpstreamContractError",
            None,
            false,
        ),
        case(
            json!({"errorRate": 1.0, "errorStatus": 422}),
            500,
            "UpstreamContractError",
            None,
            false,
        ),
    ]
}

async fn check(dependency: &str, case: Case) {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "1");
        s.set("INVENTORY_BREAKER_FAILURE_THRESHOLD", "1");
    })
    .await;
    let cart = app.cart_with("usr_matrix", &[("SKU-MUG", 1)]).await;
    if dependency == "paymentGateway" {
        app.payment_faults(case.faults.clone()).await;
    } else {
        app.inventory_faults(case.faults.clone()).await;
    }
    let answer = app.checkout("usr_matrix", &cart, "tok_visa").await;
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let error_id = answer
        .headers()
        .get("x-error-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = status_and_body(answer).await;
    let what = format!("{dependency} {}: {status} {body}", case.faults);
    assert_eq!(status, case.status, "{what}");
    assert_eq!(retry_after.as_deref(), case.retry_after, "{what}");
    if status == 503 {
        assert_eq!(body["error"], "SERVICE_TEMPORARILY_UNAVAILABLE", "{what}");
        assert_eq!(body["dependency"], dependency, "{what}");
        assert_eq!(
            body["retryAfterSeconds"].to_string(),
            case.retry_after.unwrap_or_default(),
            "{what}"
        );
    } else {
        assert_eq!(body["error"], "INTERNAL_SERVER_ERROR", "{what}");
        assert!(body.get("dependency").is_none(), "{what}");
    }
    let error_id = error_id.expect("every 5xx has an error ID");
    assert_eq!(body["errorId"], error_id.as_str());
    let errors: Vec<Value> = app
        .records_at("ERROR")
        .into_iter()
        .filter(|r| r["errorId"] == error_id.as_str())
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR record: {what}");
    assert_eq!(errors[0]["errorClass"], case.error_class, "{what}: {}", errors[0]);
    assert_eq!(errors[0]["dependency"], dependency, "{what}: {}", errors[0]);

    let metrics = metrics_of(&app.base).await;
    let state = series(
        &metrics,
        &format!("circuit_breaker_state{{dependency=\"{dependency}\"}}"),
    );
    assert_eq!(state, Some(if case.opens { 1.0 } else { 0.0 }), "breaker: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payment_gateway_answer_is_classified_as_design_says() {
    for case in cases() {
        check("paymentGateway", case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inventory_answer_is_classified_as_design_says() {
    for case in cases() {
        check("inventoryService", case).await;
    }
}
