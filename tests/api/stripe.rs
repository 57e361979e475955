//! `PAYMENT_PROVIDER=stripe` against localstripe, a stateful fake of Stripe's API
//! (installed from PyPI as a test tool, started here on 127.0.0.1 with
//! `--from-scratch`): PaymentIntents created with the order's amount, currency and
//! metadata; declines; 3-D Secure passed and failed; signed webhooks, refused when
//! forged or stale, applied once and in any order.

use std::path::PathBuf;
use std::time::Duration;

use checkout_service::upstream::payment::stripe::sign;
use serde_json::{Value, json};

use crate::cli::free_port;
use crate::helpers::*;
use crate::on_both_backends;

pub const SECRET_KEY: &str = "sk_test_localstripe_0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_localstripe_test_0123456789";

/// Cards localstripe treats as Stripe's test cards do.
pub const CARD_OK: &str = "4242424242424242";
pub const CARD_DECLINED: &str = "4000000000000341";
pub const CARD_OK_TOO: &str = "4000000000000002";
pub const CARD_3DS: &str = "4000002760003184";

/// A localstripe process of one test's own.
pub struct LocalStripe {
    pub url: String,
    client: reqwest::Client,
    _child: tokio::process::Child,
}

impl LocalStripe {
    /// Starts localstripe on a free port, or `None` when it is not installed.
    pub async fn start() -> Option<LocalStripe> {
        let program: PathBuf = test_tool("localstripe")?;
        let port = free_port();
        let child = tokio::process::Command::new(program)
            .args(["--port", &port.to_string(), "--from-scratch"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start localstripe");
        let stripe = LocalStripe {
            url: format!("http://127.0.0.1:{port}"),
            client: http_client(),
            _child: child,
        };
        let up = eventually(Duration::from_secs(20), || async {
            stripe
                .client
                .get(format!("{}/v1/balance", stripe.url))
                .bearer_auth(SECRET_KEY)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "localstripe answers at {}", stripe.url);
        Some(stripe)
    }

    /// The configuration that points the service at this localstripe.
    pub fn configure(&self, source: &mut checkout_service::config::Source) {
        source.set("PAYMENT_PROVIDER", "stripe");
        source.set("STRIPE_API_BASE", &self.url);
        source.set("STRIPE_SECRET_KEY", SECRET_KEY);
        source.set("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET);
    }

    /// A form-encoded call to Stripe's API, as the secret key's holder.
    pub async fn call(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(SECRET_KEY);
        let request = if form.is_empty() { request } else { request.form(form) };
        status_and_body(request.send().await.expect("localstripe answers")).await
    }

    /// A PaymentMethod for `card`: what a buyer's browser would make with Stripe.js.
    pub async fn payment_method(&self, card: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", card),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2034"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("pm_...").to_string()
    }

    /// Sends Stripe's events to `url`, signed with the webhook secret.
    pub async fn deliver_to(&self, url: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/_config/webhooks/checkout",
                &[("url", url), ("secret", WEBHOOK_SECRET)],
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// A PaymentIntent as Stripe has it now, with its latest charge.
    pub async fn intent(&self, id: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/payment_intents/{id}?expand[]=latest_charge"),
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every PaymentIntent.
    pub async fn intents(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(id) => format!("/v1/payment_intents?limit=100&starting_after={id}"),
                None => "/v1/payment_intents?limit=100".to_string(),
            };
            let (status, body) = self.call(reqwest::Method::GET, &path, &[]).await;
            assert_eq!(status, 200, "{body}");
            let page = body["data"].as_array().cloned().unwrap_or_default();
            after = page.last().and_then(|p| p["id"].as_str()).map(str::to_string);
            all.extend(page);
            if body["has_more"] != true || after.is_none() {
                return all;
            }
        }
    }

    /// The buyer passes or fails the 3-D Secure challenge.
    pub async fn authenticate(&self, id: &str, client_secret: &str, success: bool) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/payment_intents/{id}/_authenticate"),
                &[
                    ("client_secret", client_secret),
                    ("success", if success { "true" } else { "false" }),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// An event as Stripe sends it, about `intent` as it is now.
fn event(id: &str, kind: &str, intent: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": now_secs(),
        "data": {"object": intent},
    }))
    .expect("JSON")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Delivers `payload` to the service as Stripe would, signed at `signed_at`.
async fn deliver(app: &TestApp, payload: &[u8], signature: &str) -> (u16, Value) {
    let answer = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(payload.to_vec())
        .send()
        .await
        .expect("delivered");
    status_and_body(answer).await
}

async fn signed(app: &TestApp, payload: &[u8]) -> (u16, Value) {
    deliver(app, payload, &sign(payload, WEBHOOK_SECRET, now_secs())).await
}

async fn stripe_app(backend: Backend, stripe: &LocalStripe) -> TestApp {
    let app = spawn_app_with(backend, |s| stripe.configure(s)).await;
    stripe.deliver_to(&app.url("/webhooks/stripe")).await;
    app
}

async fn checkout_with(app: &TestApp, user: &str, cart: &str, payment_method: &str) -> (u16, Value) {
    let answer = app
        .client
        .post(app.url("/api/checkout/complete"))
        .bearer_auth(app.token(user))
        .header("Idempotency-Key", checkout_service::domain::ids::random_id("key_"))
        .json(&json!({"cartId": cart, "paymentToken": payment_method, "userId": user}))
        .send()
        .await
        .expect("answered");
    status_and_body(answer).await
}

/// A checkout waiting for the buyer's 3-D Secure challenge.
struct Challenged {
    cart: String,
    /// The PaymentIntent's ID.
    intent: String,
    /// The PaymentIntent's client secret, with which the buyer answers.
    secret: String,
}

/// Checks out a one-mug cart of `user`'s with the card that asks for 3-D Secure:
/// the answer is 202, the PaymentIntent waiting for the buyer.
async fn challenged_checkout(app: &TestApp, stripe: &LocalStripe, user: &str) -> Challenged {
    let cart = app.cart_with(user, &[("SKU-MUG", 1)]).await;
    let card = stripe.payment_method(CARD_3DS).await;
    let (status, action) = checkout_with(app, user, &cart, &card).await;
    assert_eq!(status, 202, "{action}");
    let text = |field: &str| {
        action[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {action}"))
            .to_string()
    };
    Challenged {
        intent: text("paymentIntentId"),
        secret: text("clientSecret"),
        cart,
    }
}

async fn orders_of(app: &TestApp, cart: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM orders WHERE cart_id = '{cart}'");
    count(&app.db, &sql).await
}

on_both_backends!(
    async fn a_checkout_creates_and_confirms_one_payment_intent_for_the_order(backend) {
        let Some(stripe) = LocalStripe::start().await else { return };
        let app = stripe_app(backend, &stripe).await;
        let cart = app.cart_with("usr_stripe", &[("SKU-MUG", 2)]).await;
        let card = stripe.payment_method(CARD_OK).await;
        let (status, order) = checkout_with(&app, "usr_stripe", &cart, &card).await;
        assert_eq!(status, 201, "{order}");
        let intent_id = order["transactionId"].as_str().expect("the PaymentIntent's ID");
        assert!(intent_id.starts_with("pi_"), "{order}");
        let intent = stripe.intent(intent_id).await;
        assert_eq!(intent["status"], "succeeded");
        assert_eq!(intent["amount"], order["totalCents"], "{intent}");
        assert_eq!(intent["currency"], "usd");
        assert_eq!(intent["payment_method"], card.as_str());
        assert_eq!(intent["metadata"]["cartId"], cart.as_str());
        let attempt = attempts_of(&app.db, &cart).await;
        assert_eq!(intent["metadata"]["attemptId"], attempt[0].0.as_str(), "{attempt:?}");

        // localstripe's own payment_intent.succeeded arrives about a second later and
        // finds the order made: nothing changes.
        let applied = eventually(Duration::from_secs(10), || async {
            app.events("access").iter().any(|r| r["endpoint"] == "POST /webhooks/stripe" && r["status"] == 200)
        })
        .await;
        assert!(applied, "localstripe's event was received");
        assert_eq!(orders_of(&app, &cart).await, 1);
        assert_eq!(stripe.intents().await.len(), 1, "one PaymentIntent, never a second");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_is_402_with_its_code_and_a_new_card_then_pays() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let before = app.stock("SKU-MUG").await;
    let cart = app.cart_with("usr_declined", &[("SKU-MUG", 1)]).await;
    let declined = stripe.payment_method(CARD_DECLINED).await;
    let (status, body) = checkout_with(&app, "usr_declined", &cart, &declined).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (402, Some("PAYMENT_DECLINED")),
        "{body}"
    );
    assert_eq!(body["declineCode"], "card_declined");
    assert_eq!(
        app.cart("usr_declined", &cart).await["status"],
        "OPEN",
        "the cart reopens"
    );
    let released = eventually(Duration::from_secs(5), || async {
        app.stock("SKU-MUG").await == before
    })
    .await;
    assert!(released, "the reservation is released");

    let good = stripe.payment_method(CARD_OK_TOO).await;
    let (status, order) = checkout_with(&app, "usr_declined", &cart, &good).await;
    assert_eq!(status, 201, "{order}");
    let succeeded: Vec<_> = stripe
        .intents()
        .await
        .into_iter()
        .filter(|i| i["status"] == "succeeded")
        .collect();
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["id"], order["transactionId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_payment_method_is_declined_not_a_server_error() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let cart = app.cart_with("usr_nopm", &[("SKU-MUG", 1)]).await;
    let (status, body) = checkout_with(&app, "usr_nopm", &cart, "pm_doesnotexist").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (402, Some("PAYMENT_DECLINED")),
        "{body}"
    );
    assert_eq!(app.cart("usr_nopm", &cart).await["status"], "OPEN");
    assert!(
        app.records_at("ERROR").is_empty(),
        "a buyer's mistake is not an error of ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_d_secure_passed_completes_the_order_when_stripe_says_so() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let cart = app.cart_with("usr_3ds", &[("SKU-MUG", 1)]).await;
    let card = stripe.payment_method(CARD_3DS).await;
    let (status, action) = checkout_with(&app, "usr_3ds", &cart, &card).await;
    assert_eq!(
        (status, action["status"].as_str()),
        (202, Some("REQUIRES_ACTION")),
        "{action}"
    );
    let intent_id = action["paymentIntentId"].as_str().expect("the PaymentIntent");
    let secret = action["clientSecret"].as_str().expect("clientSecret");
    assert!(action["nextAction"].is_object(), "{action}");
    assert_eq!(app.cart("usr_3ds", &cart).await["status"], "CHECKING_OUT");

    // Checking out again meanwhile answers with the same PaymentIntent.
    let (again, same) = checkout_with(&app, "usr_3ds", &cart, &card).await;
    assert!(again == 202 || again == 409, "{again} {same}");
    if again == 202 {
        assert_eq!(same["paymentIntentId"], intent_id);
    }
    assert_eq!(stripe.intents().await.len(), 1, "never a second PaymentIntent");

    // The buyer passes; localstripe charges and sends payment_intent.succeeded.
    stripe.authenticate(intent_id, secret, true).await;
    let ordered = eventually(Duration::from_secs(15), || async { orders_of(&app, &cart).await == 1 }).await;
    assert!(ordered, "the webhook completes the order");
    assert_eq!(app.cart("usr_3ds", &cart).await["status"], "COMPLETED");
    let transaction = count(
        &app.db,
        &format!("SELECT COUNT(*) FROM orders WHERE transaction_id = '{intent_id}'"),
    )
    .await;
    assert_eq!(transaction, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_d_secure_failed_releases_the_stock_and_reopens_the_cart() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let before = app.stock("SKU-MUG").await;
    let Challenged { cart, intent, secret } = challenged_checkout(&app, &stripe, "usr_3ds_fail").await;
    stripe.authenticate(&intent, &secret, false).await;
    // localstripe sends no event for a failed authentication; Stripe would.
    let intent = stripe.intent(&intent).await;
    let (status, receipt) = signed(&app, &event("evt_3ds_failed", "payment_intent.payment_failed", &intent)).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("applied")),
        "{receipt}"
    );
    assert_eq!(app.cart("usr_3ds_fail", &cart).await["status"], "OPEN");
    let released = eventually(Duration::from_secs(5), || async {
        app.stock("SKU-MUG").await == before
    })
    .await;
    assert!(released, "the stock comes back");
    assert_eq!(orders_of(&app, &cart).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_stale_event_is_refused_and_changes_nothing() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let Challenged { cart, intent, .. } = challenged_checkout(&app, &stripe, "usr_forged").await;
    let intent = stripe.intent(&intent).await;
    let payload = event("evt_forged", "payment_intent.payment_failed", &intent);

    let forged = sign(&payload, "whsec_someone_else", now_secs());
    let stale = sign(&payload, WEBHOOK_SECRET, now_secs() - 301);
    for (signature, why) in [
        (forged.as_str(), "no Stripe-Signature v1 signature matches the payload"),
        (
            stale.as_str(),
            "the Stripe-Signature timestamp is outside the 300 s tolerance",
        ),
        ("garbage", "the Stripe-Signature header is missing or malformed"),
    ] {
        let (status, body) = deliver(&app, &payload, signature).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("INVALID_FIELD")), "{body}");
        assert_eq!(body["field"], "Stripe-Signature");
        assert!(body["message"].as_str().is_some_and(|m| m.contains(why)), "{body}");
    }
    assert_eq!(
        app.cart("usr_forged", &cart).await["status"],
        "CHECKING_OUT",
        "nothing changed"
    );
    assert_eq!(count(&app.db, "SELECT COUNT(*) FROM webhook_events").await, 0);
    // The same event, signed as it should be, is applied: the refusals kept nothing.
    let (status, receipt) = signed(&app, &payload).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("applied")),
        "{receipt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_twice_and_out_of_order_settle_a_payment_once() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = stripe_app(Backend::Sqlite, &stripe).await;
    let Challenged {
        cart,
        intent: intent_id,
        secret,
    } = challenged_checkout(&app, &stripe, "usr_events").await;
    // An early event from while the buyer was still challenged...
    let waiting = stripe.intent(&intent_id).await;
    let early = event("evt_early", "payment_intent.requires_action", &waiting);
    // ...then the buyer passes.
    stripe.authenticate(&intent_id, &secret, true).await;
    let paid = stripe.intent(&intent_id).await;
    let succeeded = event("evt_paid", "payment_intent.succeeded", &paid);
    let (status, first) = signed(&app, &succeeded).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = signed(&app, &succeeded).await;
    assert_eq!(
        (status, second["outcome"].as_str()),
        (200, Some("duplicate")),
        "{second}"
    );
    // The early event arrives last: applied by reading the PaymentIntent, which has
    // succeeded, so the order stands.
    let (status, late) = signed(&app, &early).await;
    assert_eq!(status, 200, "{late}");
    // And a failure event forged from an old copy, validly signed, changes nothing either.
    let (status, _) = signed(
        &app,
        &event("evt_old_failure", "payment_intent.payment_failed", &waiting),
    )
    .await;
    assert_eq!(status, 200);
    let ordered = eventually(Duration::from_secs(10), || async { orders_of(&app, &cart).await == 1 }).await;
    assert!(ordered);
    // localstripe's own succeeded event comes too; still one order, one payment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(orders_of(&app, &cart).await, 1);
    assert_eq!(app.cart("usr_events", &cart).await["status"], "COMPLETED");
    let refunded = stripe.intent(&intent_id).await["latest_charge"]["amount_refunded"].as_i64();
    assert_eq!(refunded, Some(0), "nothing was refunded");
}

/// Every way Stripe's PaymentIntents and the orders disagree with the invariant: per
/// cart at most one succeeded, unrefunded PaymentIntent, and one exactly when the
/// cart has an order, with that PaymentIntent's ID and amount.
fn stripe_violations(intents: &[Value], orders: &std::collections::HashMap<String, (String, i64)>) -> Vec<String> {
    let mut live: std::collections::HashMap<String, Vec<&Value>> = std::collections::HashMap::new();
    for intent in intents {
        let refunded = intent["latest_charge"]["amount_refunded"].as_i64().unwrap_or(0);
        if intent["status"] == "succeeded" && refunded < intent["amount"].as_i64().unwrap_or(0) {
            let cart = intent["metadata"]["cartId"].as_str().unwrap_or_default().to_string();
            live.entry(cart).or_default().push(intent);
        }
    }
    let mut found = Vec::new();
    let carts: std::collections::HashSet<&String> = live.keys().chain(orders.keys()).collect();
    for cart in carts {
        let paid = live.get(cart).cloned().unwrap_or_default();
        match (paid.as_slice(), orders.get(cart)) {
            ([], None) => {}
            ([intent], Some((transaction, total))) => {
                if intent["id"] != transaction.as_str() || intent["amount"] != *total {
                    found.push(format!(
                        "cart {cart}: order {transaction}/{total} does not match {intent}"
                    ));
                }
            }
            ([intent], None) => found.push(format!("cart {cart}: paid by {} without an order", intent["id"])),
            ([], Some((transaction, _))) => found.push(format!("cart {cart}: order {transaction} without a payment")),
            (many, _) => found.push(format!("cart {cart}: paid {} times", many.len())),
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_between_create_confirm_and_order_loses_nothing_on_stripe() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rand::Rng as _;

    use crate::cli::{Process, checkout as command, stocked_database};
    use crate::crash::{Tally, quiescent, shopper};

    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let db = stocked_database(Backend::Sqlite).await;
    let sandbox = start_sandbox().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = process_env(&db.url, &sandbox, port);
    env.extend([
        ("PAYMENT_PROVIDER", "stripe".to_string()),
        ("STRIPE_API_BASE", stripe.url.clone()),
        ("STRIPE_SECRET_KEY", SECRET_KEY.to_string()),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("PAYMENT_TIMEOUT_MS", "3000".to_string()),
        ("REQUEST_TIMEOUT_MS", "8000".to_string()),
        ("LOG_LEVEL", "warn".to_string()),
    ]);
    stripe.deliver_to(&format!("{base}/webhooks/stripe")).await;
    let tally = Arc::new(Tally::default());
    let workers = 6;
    let mut cards = Vec::new();
    for _ in 0..workers {
        cards.push(stripe.payment_method(CARD_OK).await);
    }
    let kills = 3;
    for _ in 0..kills {
        let mut server = Process::spawn(command(&["serve"], &env));
        server.wait_until_serving(&format!("{base}/health/live")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let shoppers: Vec<_> = cards
            .iter()
            .enumerate()
            .map(|(n, card)| {
                let user = format!("usr_stripe_crash_{n}");
                let token = process_token(&user);
                tokio::spawn(shopper(
                    base.clone(),
                    token,
                    user,
                    card.clone(),
                    stop.clone(),
                    tally.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1500..3000))).await;
        server.signal(libc::SIGKILL);
        assert_eq!(
            server.exit_code(Duration::from_secs(10)).await,
            -1,
            "killed by a signal"
        );
        stop.store(true, Ordering::Relaxed);
        for shopper in shoppers {
            let _ = tokio::time::timeout(Duration::from_secs(10), shopper).await;
        }
    }
    let mut server = Process::spawn(command(&["serve"], &env));
    server.wait_until_serving(&format!("{base}/health/ready")).await;
    let settled = eventually(Duration::from_secs(60), || quiescent(&db)).await;
    assert!(settled, "the reconciler settles every attempt");

    let orders: std::collections::HashMap<String, (String, i64)> = {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
            .await
            .expect("connect");
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT cart_id, transaction_id, total_cents FROM orders WHERE transaction_id IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await
        .expect("orders")
        .into_iter()
        .map(|(cart, transaction, total)| (cart, (transaction, total)))
        .collect()
    };
    let mut intents = Vec::new();
    for summary in stripe.intents().await {
        intents.push(stripe.intent(summary["id"].as_str().expect("pi")).await);
    }
    let found = stripe_violations(&intents, &orders);
    let succeeded = intents.iter().filter(|i| i["status"] == "succeeded").count();
    report(
        "stripe-crash",
        &format!(
            "stripe crash test: {kills} SIGKILLs, {} carts, {} checkout requests, {} PaymentIntents ({succeeded} succeeded), \
             {} orders, {} violations",
            tally.carts.load(Ordering::Relaxed),
            tally.requests.load(Ordering::Relaxed),
            intents.len(),
            orders.len(),
            found.len()
        ),
    );
    assert!(found.is_empty(), "{found:#?}");
    assert!(!orders.is_empty(), "orders were made");
    server.signal(libc::SIGTERM);
    let _ = server.exit_code(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_who_never_acts_is_cancelled_after_the_action_timeout() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, |s| {
        stripe.configure(s);
        s.set("STRIPE_ACTION_TIMEOUT_MS", "1000");
    })
    .await;
    let before = app.stock("SKU-MUG").await;
    let Challenged {
        cart,
        intent: intent_id,
        ..
    } = challenged_checkout(&app, &stripe, "usr_idle").await;
    // No webhook comes and the buyer never authenticates: the reconciler cancels.
    let reopened = eventually(Duration::from_secs(15), || async {
        app.cart("usr_idle", &cart).await["status"] == "OPEN"
    })
    .await;
    assert!(reopened, "the cart reopens once the buyer's time is up");
    assert_eq!(stripe.intent(&intent_id).await["status"], "canceled");
    let released = eventually(Duration::from_secs(5), || async {
        app.stock("SKU-MUG").await == before
    })
    .await;
    assert!(released, "the stock comes back");
    assert_eq!(attempts_of(&app.db, &cart).await[0].1, "FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_whose_webhook_never_comes_is_settled_by_the_reconciler() {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    // No webhook endpoint is registered: Stripe's word never arrives.
    let app = spawn_app_with(Backend::Sqlite, |s| stripe.configure(s)).await;
    let Challenged { cart, intent, secret } = challenged_checkout(&app, &stripe, "usr_nohook").await;
    stripe.authenticate(&intent, &secret, true).await;
    let ordered = eventually(Duration::from_secs(45), || async { orders_of(&app, &cart).await == 1 }).await;
    assert!(
        ordered,
        "the reconciler reads the PaymentIntent and completes the order"
    );
    assert_eq!(app.cart("usr_nohook", &cart).await["status"], "COMPLETED");
}
