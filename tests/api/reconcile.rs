//! The reconciler settles what failures leave behind, without any client retry,
//! and several instances sharing a database settle each attempt exactly once.

use std::time::Duration;

use checkout_service::app::App;
use checkout_service::telemetry::{self, MemorySink};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

async fn wait_for_cart(app: &TestApp, user: &str, cart: &str, status: &str) -> Value {
    let reached = eventually(Duration::from_secs(15), || async {
        app.cart(user, cart).await["status"] == status
    })
    .await;
    let current = app.cart(user, cart).await;
    assert!(reached, "cart never became {status}: {current}");
    current
}

on_both_backends!(
    async fn a_charge_whose_answer_was_lost_becomes_an_order_without_any_retry(backend) {
        let app = spawn_app_with(backend, |s| s.set("PAYMENT_TIMEOUT_MS", "300")).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 3)]).await;
        app.payment_faults(json!({"latencyMs": 1500})).await;
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 503);
        app.payment_faults(json!({})).await;
        let settled = wait_for_cart(&app, "usr_1", &cart, "COMPLETED").await;
        let ledger = app.ledger().await;
        assert_eq!(ledger["charges"].as_array().expect("charges").len(), 1);
        let order_id = settled["orderId"].as_str().expect("an order");
        let order: Value = app.get(&format!("/api/orders/{order_id}"), "usr_1").await.json().await.expect("json");
        assert_eq!(order["transactionId"], ledger["charges"][0]["id"]);
        assert_eq!(order["totalCents"], 3 * 1200);
        let reconciled = app.wait_for_events("reconciled", 1, |r| r["action"] == "completed").await;
        assert_eq!(reconciled.len(), 1);
        assert_eq!(reconciled[0]["cartId"], cart.as_str());
        assert_eq!(reconciled[0]["orderId"], order_id);
        assert!(
            eventually(Duration::from_secs(5), || async { app.stock("SKU-MUG").await["committed"] == 3 }).await,
            "the stock is committed"
        );
    }
);

on_both_backends!(
    async fn a_charge_that_never_happened_reopens_the_cart_and_gives_the_stock_back(backend) {
        let app = spawn_app_with(backend, |s| s.set("PAYMENT_TIMEOUT_MS", "300")).await;
        let cart = app.cart_with("usr_1", &[("SKU-LIMITED", 1)]).await;
        app.payment_faults(json!({"errorRate": 1.0, "errorStatus": 502})).await;
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 503);
        assert_eq!(app.cart("usr_1", &cart).await["status"], "CHECKING_OUT");
        app.payment_faults(json!({})).await;
        wait_for_cart(&app, "usr_1", &cart, "OPEN").await;
        assert_eq!(app.stock("SKU-LIMITED").await["available"], 1);
        assert!(app.ledger().await["charges"].as_array().expect("charges").is_empty());
        assert_eq!(attempts_of(&app.db, &cart).await[0].1, "FAILED");
        assert_eq!(app.wait_for_events("reconciled", 1, |r| r["action"] == "reopened").await.len(), 1);
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 201, "the shopper can try again");
    }
);

on_both_backends!(
    async fn a_charge_that_lands_after_its_checkout_was_given_up_is_refunded(backend) {
        let app = spawn_app_tuned(
            backend,
            |s| s.set("PAYMENT_TIMEOUT_MS", "300"),
            |settings| settings.recheck_interval = Duration::from_millis(200),
            axum::Router::new(),
        )
        .await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        app.payment_faults(json!({"errorRate": 1.0, "errorStatus": 500})).await;
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 503);
        app.payment_faults(json!({})).await;
        wait_for_cart(&app, "usr_1", &cart, "OPEN").await;
        let (attempt, _) = attempts_of(&app.db, &cart).await.remove(0);
        // The gateway executes the charge late, as a queued retry of its own would.
        let late = app
            .client
            .post(format!("{}/v1/charges", app.sandbox.payment_url()))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", &attempt)
            .json(&json!({"amountCents": 1200, "currency": "USD", "token": "tok_visa"}))
            .send()
            .await
            .expect("late charge");
        assert_eq!(late.status(), 200);
        let refunded = eventually(Duration::from_secs(10), || async {
            app.ledger().await["charges"][0]["refunded"] == true
        })
        .await;
        assert!(refunded, "{}", app.ledger().await);
        assert_eq!(app.ledger().await["refunds"].as_array().expect("refunds").len(), 1);
        let logged = app.wait_for_events("reconciled", 1, |r| r["action"] == "refunded").await;
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0]["level"], "WARN");
        assert_eq!(app.cart("usr_1", &cart).await["orderId"], Value::Null, "no order, no net charge");
    }
);

on_both_backends!(
    async fn stock_owed_back_is_released_once_the_inventory_answers_again(backend) {
        let app = spawn_app_with(backend, |s| s.set("INVENTORY_TIMEOUT_MS", "300")).await;
        let cart = app.cart_with("usr_1", &[("SKU-LIMITED", 1)]).await;
        app.payment_faults(json!({"latencyMs": 2000})).await;
        let checkout = app.checkout("usr_1", &cart, "tok_chargeDeclined");
        let outage = async {
            // Stock is reserved and the card is being declined: now the inventory goes down.
            wait_for_sandbox_requests(&app.sandbox.payment_url(), "POST /v1/charges", 1).await;
            app.inventory_faults(json!({"refuse": true})).await;
        };
        let (response, ()) = tokio::join!(checkout, outage);
        assert_eq!(response.status(), 402, "the decline is still the answer");
        assert_eq!(app.cart("usr_1", &cart).await["status"], "OPEN");
        assert_eq!(attempts_of(&app.db, &cart).await[0].1, "FAILED");
        app.inventory_faults(json!({})).await;
        let released = eventually(Duration::from_secs(10), || async { app.stock("SKU-LIMITED").await["available"] == 1 }).await;
        assert!(released, "{}", app.stock("SKU-LIMITED").await);
        // The reconciler logs once it has recorded the release, just after the sandbox saw it.
        app.wait_for_events("reconciled", 1, |r| r["action"] == "inventory_settled").await;
    }
);

on_both_backends!(
    async fn several_instances_on_one_database_settle_each_attempt_exactly_once(backend) {
        let first = spawn_app_with(backend, |s| {
            s.set("PAYMENT_TIMEOUT_MS", "300");
            s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "1000");
        })
        .await;
        let mut carts = Vec::new();
        for _ in 0..12 {
            carts.push(first.cart_with("usr_1", &[("SKU-MUG", 1)]).await);
        }
        first.payment_faults(json!({"latencyMs": 1200})).await;
        let answers = futures_util::future::join_all(carts.iter().map(|cart| first.checkout("usr_1", cart, "tok_visa"))).await;
        assert!(answers.iter().all(|r| r.status() == 503));
        first.payment_faults(json!({})).await;

        let second_logs = MemorySink::default();
        let second = App::build(first.app.settings.clone()).expect("a second instance");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = checkout_service::server::start(second, listener, telemetry::capture(second_logs.clone())).expect("start");

        for cart in &carts {
            wait_for_cart(&first, "usr_1", cart, "COMPLETED").await;
        }
        let counted = |records: Vec<Value>| {
            records
                .iter()
                .filter(|r| r["event"] == "reconciled" && r["action"] == "completed")
                .count()
        };
        let all_logged = eventually(Duration::from_secs(5), || async {
            counted(first.logs.records()) + counted(second_logs.records()) >= 12
        })
        .await;
        assert!(all_logged, "every settlement is logged");
        let completed = |records: Vec<Value>| -> Vec<String> {
            records
                .into_iter()
                .filter(|r| r["event"] == "reconciled" && r["action"] == "completed")
                .map(|r| r["attemptId"].as_str().expect("attemptId").to_string())
                .collect()
        };
        let mut settled = completed(first.logs.records());
        settled.extend(completed(second_logs.records()));
        settled.sort();
        let before = settled.len();
        settled.dedup();
        assert_eq!((before, settled.len()), (12, 12), "each attempt settled once, by one instance");
        let ledger = first.ledger().await;
        assert_eq!(ledger["charges"].as_array().expect("charges").len(), 12);
        assert!(ledger["refunds"].as_array().expect("refunds").is_empty());
        assert_eq!(count(&first.db, "SELECT COUNT(*) FROM orders").await, 12);
        running.shutdown().await.expect("stop");
    }
);

/// An app whose every turn for commits after answering is taken, as under a burst,
/// so that each checkout leaves its stock commit owed to the reconciler; the turns
/// are held until the permit is dropped.
async fn app_with_every_commit_turn_taken(backend: Backend) -> (TestApp, tokio::sync::OwnedSemaphorePermit) {
    let app = spawn_app_with(backend, |s| {
        s.set("PAYMENT_TIMEOUT_MS", "300");
        s.set("REQUEST_TIMEOUT_MS", "1000");
    })
    .await;
    let turns = app
        .app
        .checkout
        .settling
        .clone()
        .acquire_many_owned(u32::try_from(checkout_service::service::SETTLING_AT_ONCE).expect("small"))
        .await
        .expect("the semaphore is never closed");
    (app, turns)
}

on_both_backends!(
    async fn a_stock_commit_with_no_turn_free_is_left_owed_and_the_reconciler_makes_it(backend) {
        let (app, turns) = app_with_every_commit_turn_taken(backend).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 2)]).await;
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 201);
        let owed = count(&app.db, "SELECT COUNT(*) FROM checkout_attempts WHERE inventory_pending = 'COMMIT'").await;
        assert_eq!(owed, 1, "the commit is owed in the attempt");
        assert_eq!(app.stock("SKU-MUG").await["committed"], 0, "and not made yet");
        let settled = eventually(Duration::from_secs(10), || async { app.stock("SKU-MUG").await["committed"] == 2 }).await;
        assert!(settled, "the reconciler commits the stock: {}", app.stock("SKU-MUG").await);
        app.wait_for_events("reconciled", 1, |r| r["action"] == "inventory_settled").await;
        let owed = count(&app.db, "SELECT COUNT(*) FROM checkout_attempts WHERE inventory_pending IS NOT NULL").await;
        assert_eq!(owed, 0, "and records it");
        drop(turns);
    }
);

on_both_backends!(
    async fn a_backlog_of_owed_commits_larger_than_a_batch_is_made_once_each(backend) {
        // Each checkout leaves its commit owed, more of them than one sweep's batch of 50.
        let (app, turns) = app_with_every_commit_turn_taken(backend).await;
        let carts = 120;
        for n in 0..carts {
            let user = format!("usr_{n}");
            let cart = app.cart_with(&user, &[("SKU-MUG", 1)]).await;
            assert_eq!(app.checkout(&user, &cart, "tok_visa").await.status(), 201);
        }
        // On a slow machine the reconciler may have begun on the first ones already.
        let owed = count(&app.db, "SELECT COUNT(*) FROM checkout_attempts WHERE inventory_pending = 'COMMIT'").await;
        assert!(owed > 50, "more commits owed than one sweep takes: {owed}");
        let drained = eventually(Duration::from_secs(30), || async {
            count(&app.db, "SELECT COUNT(*) FROM checkout_attempts WHERE inventory_pending IS NOT NULL").await == 0
        })
        .await;
        assert!(drained, "the reconciler makes every owed commit");
        assert_eq!(app.stock("SKU-MUG").await["committed"], carts, "each commit made once");
        let settled = app
            .logs
            .records()
            .into_iter()
            .filter(|r| r["event"] == "reconciled" && r["action"] == "inventory_settled")
            .count();
        assert_eq!(i64::try_from(settled).expect("small"), carts, "and recorded once each");
        drop(turns);
    }
);
