//! Crash consistency: the real binary serves concurrent checkouts against a payment
//! gateway that is slow, failing, timing out and answering garbage by turns, and is
//! killed with SIGKILL mid-traffic several times. After a final restart the
//! reconciler settles everything, and the invariant of DESIGN §4 is checked against
//! the gateway's ledger: for every cart at most one successful, unrefunded charge,
//! and one exactly when the cart has a CONFIRMED order (with that charge).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use checkout_service::auth::Auth;
use checkout_service::domain::UserId;
use rand::Rng;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::cli::{Process, checkout as command, free_port, stocked_database, wait_until_serving};
use crate::helpers::*;
use crate::on_both_backends;

const ROUNDS: usize = 4;
const WORKERS: usize = 8;

/// Payment faults the chaos task cycles through (PAYMENT_TIMEOUT_MS is 400).
fn fault_cycle() -> Vec<Value> {
    vec![
        json!({"latencyMs": 30}),
        json!({"latencyMs": 700}),
        json!({"errorRate": 0.5, "errorStatus": 503}),
        json!({}),
        json!({"malformed": true}),
        json!({"latencyMs": 120, "errorRate": 0.25, "errorStatus": 500}),
    ]
}

#[derive(Default)]
pub struct Tally {
    pub carts: AtomicU64,
    pub requests: AtomicU64,
    pub created: AtomicU64,
}

/// One buyer until `stop`: a cart, an item, then checkouts of it (retried on a 5xx
/// or a lost connection) paid with `payment_token`.
pub async fn shopper(
    base: String,
    token: String,
    user: String,
    payment_token: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    checkout_service::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{base}/api/carts"))
            .bearer_auth(&token)
            .send()
            .await
        else {
            return;
        };
        let Ok(cart) = response.json::<Value>().await else {
            return;
        };
        let Some(cart) = cart["cartId"].as_str().map(str::to_string) else {
            return;
        };
        tally.carts.fetch_add(1, Ordering::Relaxed);
        let sku = if rand::rng().random_bool(0.5) {
            "SKU-MUG"
        } else {
            "SKU-TSHIRT"
        };
        if client
            .post(format!("{base}/api/carts/{cart}/items"))
            .bearer_auth(&token)
            .json(&json!({"sku": sku, "quantity": 1 + rand::rng().random_range(0..3)}))
            .send()
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..6 {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let Ok(response) = client
                .post(format!("{base}/api/checkout/complete"))
                .bearer_auth(&token)
                .json(&json!({"cartId": cart, "paymentToken": payment_token, "userId": user}))
                .send()
                .await
            else {
                return; // the server was killed
            };
            match response.status().as_u16() {
                200 | 201 => {
                    tally.created.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                402 | 404 => break,
                _ => tokio::time::sleep(Duration::from_millis(150)).await,
            }
        }
    }
}

/// Nothing left for the reconciler: no cart mid-checkout, no attempt unsettled, no
/// stock owed to the inventory.
pub async fn quiescent(db: &TestDb) -> bool {
    count(db, "SELECT COUNT(*) FROM carts WHERE status = 'CHECKING_OUT'").await == 0
        && count(
            db,
            "SELECT COUNT(*) FROM checkout_attempts WHERE state IN ('RESERVING', 'CHARGING')",
        )
        .await
            == 0
        && count(
            db,
            "SELECT COUNT(*) FROM checkout_attempts WHERE inventory_pending IS NOT NULL",
        )
        .await
            == 0
}

/// An attempt as the database holds it: cart, state, failure reason.
type AttemptRow = (String, String, String, Option<String>);

/// (attempt → its row) and (cart → (order transaction, total)).
async fn records(db: &TestDb) -> (HashMap<String, AttemptRow>, HashMap<String, (String, i64)>) {
    async fn fetch<DB: sqlx::Database>(conn: &mut DB::Connection) -> (Vec<AttemptRow>, Vec<(String, String, i64)>)
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'r> AttemptRow: sqlx::FromRow<'r, DB::Row>,
        for<'r> (String, String, i64): sqlx::FromRow<'r, DB::Row>,
        <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    {
        let attempts = sqlx::query_as("SELECT id, cart_id, state, failure FROM checkout_attempts")
            .fetch_all(&mut *conn)
            .await
            .expect("attempts");
        let orders =
            sqlx::query_as("SELECT cart_id, transaction_id, total_cents FROM orders WHERE status = 'CONFIRMED'")
                .fetch_all(&mut *conn)
                .await
                .expect("orders");
        (attempts, orders)
    }
    let (attempts, orders) = match db.backend {
        Backend::Sqlite => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
                .await
                .expect("connect");
            fetch::<sqlx::Sqlite>(&mut conn).await
        }
        Backend::Postgres => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .expect("connect");
            fetch::<sqlx::Postgres>(&mut conn).await
        }
    };
    (
        attempts.into_iter().map(|row| (row.0.clone(), row)).collect(),
        orders
            .into_iter()
            .map(|(cart, txn, total)| (cart, (txn, total)))
            .collect(),
    )
}

/// Every way the ledger and the database disagree with the invariant.
fn violations(
    ledger: &Value,
    attempts: &HashMap<String, AttemptRow>,
    orders: &HashMap<String, (String, i64)>,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut live: HashMap<&str, Vec<&Value>> = HashMap::new();
    for charge in ledger["charges"].as_array().expect("charges") {
        let key = charge["idempotencyKey"].as_str().expect("key");
        let Some((_, cart, _, _)) = attempts.get(key) else {
            found.push(format!("charge {} has no checkout attempt", charge["id"]));
            continue;
        };
        if charge["status"] == "succeeded" && charge["refunded"] == false {
            live.entry(cart.as_str()).or_default().push(charge);
        }
    }
    let describe = |charges: &[&Value]| -> String {
        charges
            .iter()
            .map(|c| {
                let key = c["idempotencyKey"].as_str().unwrap_or_default();
                let (_, _, state, failure) = attempts.get(key).cloned().unwrap_or_default();
                format!("{} by {key} ({state}, {failure:?})", c["id"])
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let carts: HashSet<&str> = attempts.values().map(|(_, cart, _, _)| cart.as_str()).collect();
    for cart in carts {
        let charges = live.get(cart).cloned().unwrap_or_default();
        match (charges.as_slice(), orders.get(cart)) {
            ([], None) => {}
            ([charge], Some((transaction, total))) => {
                if charge["id"] != transaction.as_str() || charge["amountCents"] != *total {
                    found.push(format!(
                        "cart {cart}: order {transaction}/{total} does not match charge {charge}"
                    ));
                }
            }
            ([_], None) => found.push(format!("cart {cart}: charged without an order: {}", describe(&charges))),
            ([], Some((transaction, _))) => found.push(format!("cart {cart}: order {transaction} without a charge")),
            (many, _) => found.push(format!("cart {cart}: charged {} times: {}", many.len(), describe(many))),
        }
    }
    found
}

on_both_backends!(
    async fn killing_the_server_mid_checkout_never_loses_an_order_or_charges_twice(backend) {
        let started = std::time::Instant::now();
        let db = stocked_database(backend).await;
        let sandbox = start_sandbox().await;
        let port = free_port();
        let mut env = process_env(&db.url, &sandbox, port);
        env.extend([
            ("PAYMENT_TIMEOUT_MS", "400".into()),
            ("INVENTORY_TIMEOUT_MS", "400".into()),
            ("REQUEST_TIMEOUT_MS", "1500".into()),
            ("PAYMENT_BREAKER_RECOVERY_MS", "300".into()),
            ("LOG_LEVEL", "warn".into()),
        ]);
        let base = format!("http://127.0.0.1:{port}");
        let client = http_client();
        let auth = Auth::new(&SecretString::from(JWT_SECRET.to_string()));
        let tally = Arc::new(Tally::default());

        let chaos_on = Arc::new(AtomicBool::new(true));
        let chaos = tokio::spawn({
            let (faults, on) = (sandbox.payment_faults.clone(), chaos_on.clone());
            async move {
                for config in fault_cycle().into_iter().cycle() {
                    if !on.load(Ordering::Relaxed) {
                        break;
                    }
                    faults.set(serde_json::from_value(config).expect("faults"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });

        for _ in 0..ROUNDS {
            let mut server = Process::spawn(command(&["serve"], &env));
            wait_until_serving(&client, &format!("{base}/health/live")).await;
            let stop = Arc::new(AtomicBool::new(false));
            let shoppers: Vec<_> = (0..WORKERS)
                .map(|worker| {
                    let user = format!("usr_crash_{worker}");
                    let token = auth
                        .issue(&UserId::parse(&user).expect("user"), Duration::from_secs(600))
                        .expect("token");
                    tokio::spawn(shopper(base.clone(), token, user, "tok_visa".into(), stop.clone(), tally.clone()))
                })
                .collect();
            let uptime = rand::rng().random_range(900..1800);
            tokio::time::sleep(Duration::from_millis(uptime)).await;
            server.signal(libc::SIGKILL);
            assert_eq!(server.exit_code(Duration::from_secs(10)).await, -1, "killed by a signal");
            stop.store(true, Ordering::Relaxed);
            for shopper in shoppers {
                let _ = tokio::time::timeout(Duration::from_secs(10), shopper).await;
            }
        }

        chaos_on.store(false, Ordering::Relaxed);
        let _ = chaos.await;
        sandbox.payment_faults.set(Default::default());
        let mut server = Process::spawn(command(&["serve"], &env));
        wait_until_serving(&client, &format!("{base}/health/ready")).await;
        let settling = std::time::Instant::now();
        let settled = eventually(Duration::from_secs(40), || quiescent(&db)).await;
        let settle_time = settling.elapsed();
        server.signal(libc::SIGTERM);
        assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);

        let ledger: Value = client
            .get(format!("{}/_control/ledger", sandbox.payment_url()))
            .send()
            .await
            .expect("ledger")
            .json()
            .await
            .expect("json");
        let (attempts, orders) = records(&db).await;
        let found = violations(&ledger, &attempts, &orders);
        let charges = ledger["charges"].as_array().expect("charges");
        let succeeded = charges.iter().filter(|c| c["status"] == "succeeded").count();
        let refunds = ledger["refunds"].as_array().expect("refunds").len();
        let stuck = count(&db, "SELECT COUNT(*) FROM carts WHERE status = 'CHECKING_OUT'").await;
        let summary = format!(
            "crash test ({backend:?}): {ROUNDS} SIGKILLs, {} carts, {} checkout requests ({} answered 200/201), \
             {} orders, {succeeded} successful charges, {refunds} refunds, {} net charges, {stuck} carts stuck \
             CHECKING_OUT, {} violations; settled {:.1}s after the last restart, {:.1}s in all",
            tally.carts.load(Ordering::Relaxed),
            tally.requests.load(Ordering::Relaxed),
            tally.created.load(Ordering::Relaxed),
            orders.len(),
            succeeded - refunds,
            found.len(),
            settle_time.as_secs_f64(),
            started.elapsed().as_secs_f64(),
        );
        report(&format!("crash-{backend:?}"), &summary);
        assert!(settled, "the reconciler did not settle everything: {summary}");
        assert!(found.is_empty(), "{summary}\n{}", found.join("\n"));
        assert!(!orders.is_empty(), "the test made orders: {summary}");
    }
);
