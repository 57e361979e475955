//! The checkout flow: one charge per cart, replays, concurrency, declines, stock, and
//! what the client hears when a dependency fails. On both databases.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

fn succeeded_charges(ledger: &Value) -> Vec<Value> {
    ledger["charges"]
        .as_array()
        .expect("charges")
        .iter()
        .filter(|c| c["status"] == "succeeded")
        .cloned()
        .collect()
}

on_both_backends!(
    async fn a_checkout_reserves_charges_once_and_commits_the_stock(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-TSHIRT", 2)]).await;
        let response = app.checkout("usr_456", &cart, "tok_visa").await;
        assert_eq!(response.status(), 201);
        let receipt: Value = response.json().await.expect("json");
        assert_eq!(receipt["status"], "CONFIRMED");
        assert_eq!(receipt["totalCents"], 5000);
        assert_eq!(receipt["currency"], "USD");
        assert!(receipt["orderId"].as_str().is_some_and(|id| id.starts_with("ord_")), "{receipt}");
        let charges = succeeded_charges(&app.ledger().await);
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0]["id"], receipt["transactionId"]);
        assert_eq!(charges[0]["amountCents"], 5000);
        assert!(charges[0]["idempotencyKey"].as_str().is_some_and(|k| k.starts_with("att_")));
        assert!(
            eventually(Duration::from_secs(5), || async {
                let stock = app.stock("SKU-TSHIRT").await;
                stock["committed"] == 2 && stock["reserved"] == 0
            })
            .await,
            "the reservation is committed: {}",
            app.stock("SKU-TSHIRT").await
        );
    }
);

on_both_backends!(
    async fn checking_out_a_completed_cart_returns_its_order_without_charging_again(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        let (status, first) = status_and_body(app.checkout("usr_456", &cart, "tok_visa").await).await;
        assert_eq!(status, 201);
        let (status, again) = status_and_body(app.checkout("usr_456", &cart, "tok_mastercard").await).await;
        assert_eq!(status, 200);
        assert_eq!(again, first);
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

on_both_backends!(
    async fn an_idempotency_key_replays_the_original_response_and_refuses_another_body(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        let send = |token: &'static str| {
            let app = &app;
            let cart = cart.clone();
            async move {
                app.client
                    .post(app.url("/api/checkout/complete"))
                    .bearer_auth(app.token("usr_456"))
                    .header("Idempotency-Key", "order-attempt-1")
                    .json(&json!({"cartId": cart, "paymentToken": token, "userId": "usr_456"}))
                    .send()
                    .await
                    .expect("request")
            }
        };
        let first = send("tok_visa").await;
        assert_eq!(first.status(), 201);
        assert!(first.headers().get("idempotent-replayed").is_none());
        let first: Value = first.json().await.expect("json");
        let replay = send("tok_visa").await;
        assert_eq!(replay.status(), 201, "the original status");
        assert_eq!(replay.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
        assert_eq!(replay.json::<Value>().await.expect("json"), first);
        let (status, body) = status_and_body(send("tok_amex").await).await;
        assert_eq!(status, 422);
        assert_eq!(body["error"], "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

on_both_backends!(
    async fn a_concurrent_checkout_of_the_same_cart_gets_409(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        app.payment_faults(json!({"latencyMs": 1500})).await;
        let (a, b) = tokio::join!(app.checkout("usr_456", &cart, "tok_visa"), async {
            // The first checkout is charging: the second one arrives during it.
            wait_for_sandbox_requests(&app.sandbox.payment_url(), "POST /v1/charges", 1).await;
            app.checkout("usr_456", &cart, "tok_visa").await
        });
        let (status_a, _) = status_and_body(a).await;
        let (status_b, body_b) = status_and_body(b).await;
        assert_eq!(status_a, 201);
        assert_eq!(status_b, 409);
        assert_eq!(body_b["error"], "CHECKOUT_IN_PROGRESS");
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

on_both_backends!(
    async fn a_declined_card_gets_402_gives_the_stock_back_and_reopens_the_cart(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-LIMITED", 1)]).await;
        let (status, body) = status_and_body(app.checkout("usr_456", &cart, "tok_chargeDeclined").await).await;
        assert_eq!(status, 402);
        assert_eq!(
            body,
            json!({
                "error": "PAYMENT_DECLINED",
                "message": "Your payment was declined. Please check your card details and try again.",
                "declineCode": "generic_decline",
            })
        );
        assert_eq!(app.cart("usr_456", &cart).await["status"], "OPEN");
        let released = eventually(Duration::from_secs(5), || async { app.stock("SKU-LIMITED").await["available"] == 1 }).await;
        assert!(released, "the reservation is released, after the answer");
        let (status, body) =
            status_and_body(app.checkout("usr_456", &cart, "tok_chargeDeclinedInsufficientFunds").await).await;
        assert_eq!((status, body["declineCode"].as_str()), (402, Some("insufficient_funds")));
        assert_eq!(app.checkout("usr_456", &cart, "tok_visa").await.status(), 201, "another card works");
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

on_both_backends!(
    async fn a_free_order_is_confirmed_without_a_charge(backend) {
        let app = spawn_app(backend).await;
        let before = app.stock("SKU-FREE").await["available"].as_i64().expect("stock");
        let cart = app.cart_with("usr_free", &[("SKU-FREE", 3)]).await;
        let (status, order) = status_and_body(app.checkout("usr_free", &cart, "tok_visa").await).await;
        assert_eq!(status, 201, "{order}");
        assert_eq!(order["totalCents"], 0);
        assert_eq!(order["transactionId"], Value::Null, "nothing was charged: {order}");
        assert!(app.ledger().await["charges"].as_array().expect("charges").is_empty());
        let committed = eventually(Duration::from_secs(5), || async {
            app.stock("SKU-FREE").await["available"].as_i64() == Some(before - 3)
        })
        .await;
        assert!(committed, "the stock is taken all the same");
        assert_eq!(app.cart("usr_free", &cart).await["status"], "COMPLETED");
        let (again, replay) = status_and_body(app.checkout("usr_free", &cart, "tok_visa").await).await;
        assert_eq!((again, &replay["orderId"]), (200, &order["orderId"]), "{replay}");
    }
);

on_both_backends!(
    async fn an_unavailable_item_gets_409_naming_it_and_nothing_is_charged(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1), ("SKU-SOLDOUT", 1)]).await;
        let (status, body) = status_and_body(app.checkout("usr_456", &cart, "tok_visa").await).await;
        assert_eq!(status, 409);
        assert_eq!(
            body,
            json!({
                "error": "INVENTORY_CONFLICT",
                "message": "One or more items in your cart are no longer available",
                "unavailableSkus": ["SKU-SOLDOUT"],
            })
        );
        assert_eq!(app.cart("usr_456", &cart).await["status"], "OPEN");
        assert!(app.ledger().await["charges"].as_array().expect("charges").is_empty());
        assert_eq!(app.stock("SKU-MUG").await["reserved"], 0);
    }
);

on_both_backends!(
    async fn the_last_unit_goes_to_one_buyer_only(backend) {
        let app = spawn_app(backend).await;
        let first = app.cart_with("usr_a", &[("SKU-LIMITED", 1)]).await;
        let second = app.cart_with("usr_b", &[("SKU-LIMITED", 1)]).await;
        let (a, b) = tokio::join!(
            app.checkout("usr_a", &first, "tok_visa"),
            app.checkout("usr_b", &second, "tok_visa")
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [201, 409]);
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

on_both_backends!(
    async fn declines_never_open_the_payment_circuit(backend) {
        let app = spawn_app_with(backend, |s| s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "2")).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        for _ in 0..4 {
            assert_eq!(app.checkout("usr_456", &cart, "tok_chargeDeclined").await.status(), 402);
        }
        assert_eq!(app.app.checkout.payment.upstream().breaker().state().as_str(), "CLOSED");
        assert_eq!(app.checkout("usr_456", &cart, "tok_visa").await.status(), 201);
    }
);

on_both_backends!(
    async fn a_payment_outage_opens_the_circuit_and_each_503_tells_the_real_wait(backend) {
        let app = spawn_app_with(backend, |s| {
            s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "2");
            s.set("PAYMENT_BREAKER_RECOVERY_MS", "20000");
        })
        .await;
        app.payment_faults(json!({"errorRate": 1.0, "errorStatus": 503})).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
            let response = app.checkout("usr_456", &cart, "tok_visa").await;
            assert_eq!(response.status(), 503);
            let retry_after: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
            let error_id = response.headers()["x-error-id"].to_str().expect("ascii").to_string();
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"], "SERVICE_TEMPORARILY_UNAVAILABLE");
            assert_eq!(body["dependency"], "paymentGateway");
            assert_eq!(body["retryAfterSeconds"], retry_after);
            assert_eq!(body["errorId"], error_id.as_str());
            seen.push((retry_after, error_id));
        }
        assert_eq!(seen[0].0, 1, "a short backoff while the circuit is closed");
        assert_eq!(seen[1].0, 1);
        assert!((19..=20).contains(&seen[2].0), "the real time left: {seen:?}");
        assert!((19..=20).contains(&seen[3].0), "{seen:?}");
        let stats: Value = app
            .client
            .get(format!("{}/_control/stats", app.sandbox.payment_url()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["byEndpoint"]["POST /v1/charges"], 2, "an open circuit sends nothing");
        let errors = app.records_at("ERROR");
        for (_, error_id) in &seen {
            let matching: Vec<_> = errors.iter().filter(|r| r["errorId"] == error_id.as_str()).collect();
            assert_eq!(matching.len(), 1, "exactly one ERROR record for {error_id}");
            assert_eq!(matching[0]["dependency"], "paymentGateway");
            assert_eq!(matching[0]["endpoint"], "POST /api/checkout/complete");
        }
        let transitions = app.events("circuit_breaker_transition");
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            (&transitions[0]["dependency"], &transitions[0]["from"], &transitions[0]["to"]),
            (&json!("paymentGateway"), &json!("CLOSED"), &json!("OPEN"))
        );
        let metrics = metrics_of(&app.base).await;
        assert!(metrics.contains("circuit_breaker_state{dependency=\"paymentGateway\"} 1"), "{metrics}");
        assert!(metrics.contains("circuit_breaker_transitions_total{dependency=\"paymentGateway\",to=\"OPEN\"} 1"));
    }
);

on_both_backends!(
    async fn a_charge_that_timed_out_is_resumed_with_the_same_key_and_charged_once(backend) {
        let app = spawn_app_with(backend, |s| s.set("PAYMENT_TIMEOUT_MS", "300")).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 2)]).await;
        // The sandbox records the charge, then answers too late.
        app.payment_faults(json!({"latencyMs": 1500})).await;
        let (status, body) = status_and_body(app.checkout("usr_456", &cart, "tok_visa").await).await;
        assert_eq!((status, body["dependency"].as_str()), (503, Some("paymentGateway")));
        assert_eq!(app.cart("usr_456", &cart).await["status"], "CHECKING_OUT", "never treated as not charged");
        let charges = succeeded_charges(&app.ledger().await);
        assert_eq!(charges.len(), 1, "the gateway did charge");
        app.payment_faults(json!({})).await;
        let (status, receipt) = status_and_body(app.checkout("usr_456", &cart, "tok_visa").await).await;
        assert_eq!(status, 201);
        assert_eq!(receipt["transactionId"], charges[0]["id"], "the same charge, found by its key");
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
        assert_eq!(app.events("checkout_resumed").len(), 1);
    }
);

on_both_backends!(
    async fn an_inventory_outage_answers_503_and_leaves_the_cart_open(backend) {
        let app = spawn_app_with(backend, |s| s.set("INVENTORY_TIMEOUT_MS", "1000")).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        app.inventory_faults(json!({"hang": true})).await;
        let started = std::time::Instant::now();
        let (status, body) = status_and_body(app.checkout("usr_456", &cart, "tok_visa").await).await;
        // One inventory timeout, not two: the reservation's release (which would
        // hang as well) happens after the answer.
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(1800), "answered after {waited:?}, bound 1000ms");
        assert_eq!((status, body["dependency"].as_str()), (503, Some("inventoryService")));
        assert_eq!(app.cart("usr_456", &cart).await["status"], "OPEN");
        assert!(app.ledger().await["charges"].as_array().expect("charges").is_empty());
        app.inventory_faults(json!({})).await;
        assert_eq!(app.checkout("usr_456", &cart, "tok_visa").await.status(), 201);
    }
);

on_both_backends!(
    async fn an_unparseable_gateway_answer_is_a_503_and_the_attempt_stays_charging(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_456", &[("SKU-MUG", 1)]).await;
        app.payment_faults(json!({"malformed": true})).await;
        let response = app.checkout("usr_456", &cart, "tok_visa").await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let error_id = response.headers()["x-error-id"].to_str().expect("ascii").to_string();
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body,
            json!({
                "error": "SERVICE_TEMPORARILY_UNAVAILABLE",
                "message": "Payment processing is temporarily unavailable. Please try again in 1 second.",
                "retryAfterSeconds": 1,
                "dependency": "paymentGateway",
                "errorId": error_id,
            })
        );
        let records: Vec<_> = app.records_at("ERROR").into_iter().filter(|r| r["errorId"] == error_id.as_str()).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["errorClass"], "UpstreamMalformedResponse");
        assert_eq!(app.cart("usr_456", &cart).await["status"], "CHECKING_OUT");
        app.payment_faults(json!({})).await;
        assert_eq!(app.checkout("usr_456", &cart, "tok_visa").await.status(), 201);
        assert_eq!(succeeded_charges(&app.ledger().await).len(), 1);
    }
);

/// A proxy in front of the payment gateway that adds `extra_cents` to the amount in
/// a charge's answer, as a provider with a bug (or a currency conversion nobody
/// asked for) would.
async fn rewriting_gateway(extra_cents: i64) -> Proxy {
    Proxy::start(Some(std::sync::Arc::new(
        move |method: &str, path: &str, body: bytes::Bytes| {
            let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
                return body;
            };
            if method == "POST"
                && path == "/v1/charges"
                && let Some(cents) = answer["amountCents"].as_i64()
            {
                answer["amountCents"] = json!(cents + extra_cents);
            }
            bytes::Bytes::from(answer.to_string())
        },
    )))
    .await
}

on_both_backends!(
    async fn a_charge_of_another_amount_is_refunded_at_once_and_the_cart_reopens(backend) {
        let proxy = rewriting_gateway(100).await;
        let app = spawn_app_with(backend, |s| s.set("PAYMENT_GATEWAY_URL", &proxy.url)).await;
        proxy.forward_to(app.sandbox.payment_url());
        let cart = app.cart_with("usr_mismatch", &[("SKU-MUG", 1)]).await;
        let (status, body) = status_and_body(app.checkout("usr_mismatch", &cart, "tok_visa").await).await;
        assert_eq!((status, body["error"].as_str()), (500, Some("INTERNAL_SERVER_ERROR")), "{body}");
        let ledger = app.ledger().await;
        let charges = ledger["charges"].as_array().expect("charges");
        assert_eq!(charges.len(), 1, "{ledger}");
        assert_eq!(charges[0]["refunded"], true, "refunded at once: {ledger}");
        assert_eq!(app.cart("usr_mismatch", &cart).await["status"], "OPEN");
        assert_eq!(attempts_of(&app.db, &cart).await[0].1, "FAILED");
        let error = app
            .records_at("ERROR")
            .into_iter()
            .find(|r| r["errorId"] == body["errorId"])
            .expect("the ERROR record");
        assert_eq!(error["errorClass"], "PaymentAmountMismatch");
        let chain = error["errorChain"].to_string();
        assert!(chain.contains("took 1300 USD for an order of 1200 USD") && chain.contains("refunded"), "{chain}");
        let mismatch = app.events("payment_amount_mismatch");
        assert_eq!(mismatch.len(), 1);
        assert_eq!((mismatch[0]["orderedCents"].as_i64(), mismatch[0]["paidCents"].as_i64()), (Some(1200), Some(1300)));
    }
);
