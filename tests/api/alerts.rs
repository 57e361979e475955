//! Each alert driven from below its threshold to above and back, with real requests
//! and a clock the test moves: it must fire and resolve in `/alerts`, in the log
//! (`event:"alert"`) and at the webhook, in Alertmanager's format.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use checkout_service::app::Overrides;
use checkout_service::app::monitor::{self, PoolSamples};
use checkout_service::clock::Clock;
use serde_json::{Value, json};

use crate::helpers::*;

struct Harness {
    app: TestApp,
    /// The app's clock: the test puts it forward instead of waiting.
    clock: Clock,
    hook: WebhookReceiver,
    pool: PoolSamples,
}

impl Harness {
    async fn start(backend: Backend, configure: impl FnOnce(&mut checkout_service::config::Source)) -> Harness {
        Harness::start_with_probe(backend, configure, None).await
    }

    async fn start_with_probe(
        backend: Backend,
        configure: impl FnOnce(&mut checkout_service::config::Source),
        probe: Option<Arc<SettableProbe>>,
    ) -> Harness {
        let clock = Clock::system();
        let hook = WebhookReceiver::start().await;
        let url = hook.url.clone();
        let overrides = Overrides {
            clock: Some(clock.clone()),
            probe: probe.map(|p| p as Arc<dyn checkout_service::ops::resources::ResourceProbe>),
        };
        let app = spawn_app_full(
            backend,
            |s| {
                s.set("ALERT_WEBHOOK_URL", url);
                // The test evaluates by hand; the background loop runs once at start.
                s.set("ALERT_EVAL_INTERVAL_MS", "86400000");
                configure(s);
            },
            |_| {},
            axum::Router::new(),
            overrides,
        )
        .await;
        Harness {
            app,
            clock,
            hook,
            pool: PoolSamples::default(),
        }
    }

    fn evaluate(&mut self) {
        tracing::dispatcher::with_default(&self.app.dispatch, || {
            monitor::evaluate(&self.app.app, &mut self.pool);
        });
    }

    async fn alert(&self, name: &str, severity: &str) -> Value {
        let alerts = self.app.operator_json("/alerts").await;
        alerts["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["name"] == name && a["severity"] == severity)
            .cloned()
            .expect("the alert is listed")
    }

    /// Checks the alert is in `state` everywhere it shows.
    async fn assert_state(&self, name: &str, severity: &str, state: &str) {
        let listed = self.alert(name, severity).await;
        assert_eq!(listed["state"], state, "{listed}");
        let logged: Vec<Value> = self
            .app
            .events("alert")
            .into_iter()
            .filter(|r| r["alertName"] == name && r["severity"] == severity)
            .collect();
        match state {
            "firing" => {
                let last = logged.last().expect("an alert record");
                assert_eq!(last["state"], "firing");
                assert_eq!(last["level"], "WARN");
                let body = self.hook.wait_for(name, severity, "firing").await;
                assert_eq!(body["version"], "4");
                assert_eq!(body["alerts"][0]["labels"]["service"], "checkout-service");
                assert!(body["alerts"][0]["labels"]["instance"].is_string(), "{body}");
                assert!(
                    listed["value"].is_number() && listed["threshold"].is_number(),
                    "{listed}"
                );
                assert!(listed["since"].is_string(), "{listed}");
            }
            _ => {
                if let Some(last) = logged.last() {
                    assert_eq!(last["state"], "resolved");
                    let resolved = self.hook.wait_for(name, severity, "resolved").await;
                    let fired = self.hook.wait_for(name, severity, "firing").await;
                    let alert = &resolved["alerts"][0];
                    assert_eq!(
                        alert["startsAt"], fired["alerts"][0]["startsAt"],
                        "the firing it ends: {resolved}"
                    );
                    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z", "{resolved}");
                    assert_eq!(alert["labels"]["instance"], fired["alerts"][0]["labels"]["instance"]);
                    let description = alert["annotations"]["description"].as_str().unwrap_or_default();
                    assert!(
                        !description.contains("n/a"),
                        "a resolved alert keeps its value: {description}"
                    );
                }
            }
        }
    }
}

async fn failing_checkout(app: &TestApp) {
    app.payment_faults(json!({"errorRate": 1.0, "errorStatus": 503})).await;
    let cart = app.cart_with("usr_alert", &[("SKU-MUG", 1)]).await;
    assert_eq!(app.checkout("usr_alert", &cart, "tok_visa").await.status(), 503);
    app.payment_faults(json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_errors_above_one_percent_page_and_resolve_once_the_window_moves_on() {
    let mut h = Harness::start(Backend::Sqlite, |_| {}).await;
    let cart = h.app.cart_with("usr_alert", &[("SKU-MUG", 1)]).await;
    assert_eq!(h.app.checkout("usr_alert", &cart, "tok_visa").await.status(), 201);
    for _ in 0..98 {
        // Replays of a completed cart: cheap, successful checkout answers.
        assert_eq!(h.app.checkout("usr_alert", &cart, "tok_visa").await.status(), 200);
    }
    failing_checkout(&h.app).await;
    h.evaluate();
    h.assert_state("CheckoutErrorRateCritical", "page", "inactive").await;
    assert_eq!(
        h.alert("CheckoutErrorRateCritical", "page").await["value"],
        0.01,
        "1 of 100 is not above 1%"
    );

    failing_checkout(&h.app).await;
    h.evaluate();
    h.assert_state("CheckoutErrorRateCritical", "page", "firing").await;
    let value = h.alert("CheckoutErrorRateCritical", "page").await["value"]
        .as_f64()
        .expect("value");
    assert!((value - 2.0 / 101.0).abs() < 1e-9, "{value}");
    h.assert_state("ErrorRateHigh", "ticket", "inactive").await;

    h.clock.advance(Duration::from_secs(6 * 60));
    h.evaluate();
    h.assert_state("CheckoutErrorRateCritical", "page", "inactive").await;
    let metrics = metrics_of(&h.app.base).await;
    assert!(metrics.contains(r#"alerts_firing{alertname="CheckoutErrorRateCritical",severity="page"} 0"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_other_routes_above_five_percent_open_a_ticket() {
    let mut h = Harness::start(Backend::Sqlite, |s| s.set("DB_STATEMENT_TIMEOUT_MS", "200")).await;
    for _ in 0..19 {
        assert_eq!(
            h.app
                .client
                .get(h.app.url("/api/products"))
                .send()
                .await
                .expect("request")
                .status(),
            200
        );
    }
    let mut lock = <sqlx::SqliteConnection as sqlx::Connection>::connect(&h.app.db.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.expect("lock");
    assert_eq!(h.app.post("/api/carts", "usr_alert", json!({})).await.status(), 503);
    h.evaluate();
    h.assert_state("ErrorRateHigh", "ticket", "inactive").await;
    assert_eq!(h.app.post("/api/carts", "usr_alert", json!({})).await.status(), 503);
    h.evaluate();
    h.assert_state("ErrorRateHigh", "ticket", "firing").await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("unlock");
    h.clock.advance(Duration::from_secs(6 * 60));
    h.evaluate();
    h.assert_state("ErrorRateHigh", "ticket", "inactive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_five_times_its_trailing_hour_opens_a_ticket() {
    let mut h = Harness::start(Backend::Sqlite, |_| {}).await;
    for _ in 0..50 {
        h.app
            .client
            .get(h.app.url("/api/products"))
            .send()
            .await
            .expect("request");
    }
    h.clock.advance(Duration::from_secs(10 * 60));
    h.evaluate();
    h.assert_state("LatencyDegraded", "ticket", "inactive").await;
    h.app.payment_faults(json!({"latencyMs": 150})).await;
    for _ in 0..3 {
        let cart = h.app.cart_with("usr_alert", &[("SKU-MUG", 1)]).await;
        assert_eq!(h.app.checkout("usr_alert", &cart, "tok_visa").await.status(), 201);
    }
    h.evaluate();
    h.assert_state("LatencyDegraded", "ticket", "firing").await;
    let alert = h.alert("LatencyDegraded", "ticket").await;
    assert!(alert["value"].as_f64().expect("p99") >= 0.15, "{alert}");
    h.clock.advance(Duration::from_secs(6 * 60));
    h.evaluate();
    h.assert_state("LatencyDegraded", "ticket", "inactive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_opens_a_ticket_then_a_page() {
    if !postgres_available().await {
        return;
    }
    let mut h = Harness::start(Backend::Postgres, |s| {
        // The stalled requests must outlast the test's own steps on a busy machine:
        // their bounds are far above the few seconds the lock is held.
        s.set("DB_POOL_MAX", "2");
        s.set("DB_STATEMENT_TIMEOUT_MS", "25000");
        s.set("DB_ACQUIRE_TIMEOUT_MS", "25000");
        s.set("REQUEST_TIMEOUT_MS", "28000");
    })
    .await;
    let cart = h.app.cart_with("usr_alert", &[("SKU-MUG", 1)]).await;
    for _ in 0..3 {
        h.evaluate();
        h.clock.advance(Duration::from_secs(20));
    }
    h.assert_state("DbPoolSaturated", "ticket", "inactive").await;

    let mut lock = <sqlx::PgConnection as sqlx::Connection>::connect(&h.app.db.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN").execute(&mut lock).await.expect("begin");
    sqlx::query("LOCK TABLE carts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .expect("lock");
    let stalled: Vec<_> = (0..3)
        .map(|_| {
            let (client, url, token) = (
                h.app.client.clone(),
                h.app.url(&format!("/api/carts/{cart}")),
                h.app.token("usr_alert"),
            );
            tokio::spawn(async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let both_busy = eventually(Duration::from_secs(3), || async {
        h.app.app.store.pool_snapshot().active == 2
    })
    .await;
    assert!(both_busy, "{:?}", h.app.app.store.pool_snapshot());
    // A minute passes with every connection busy, sampled every 20 seconds.
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(20));
        h.evaluate();
    }
    h.assert_state("DbPoolSaturated", "ticket", "firing").await;
    h.assert_state("DbPoolSaturated", "page", "firing").await;

    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("unlock");
    for request in stalled {
        let answer = request.await.expect("join");
        assert!(matches!(answer, Ok(200)), "a stalled request ended with {answer:?}");
    }
    h.clock.advance(Duration::from_secs(61));
    h.evaluate();
    h.assert_state("DbPoolSaturated", "ticket", "inactive").await;
    h.assert_state("DbPoolSaturated", "page", "inactive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_memory_and_a_filling_disk_alert_at_their_levels() {
    let probe = Arc::new(SettableProbe::default());
    probe.memory_used.store(500, Ordering::SeqCst);
    probe.disk_used.store(800, Ordering::SeqCst);
    let mut h = Harness::start_with_probe(Backend::Sqlite, |_| {}, Some(probe.clone())).await;
    h.evaluate();
    for (name, severity) in [
        ("MemoryLow", "ticket"),
        ("DiskFilling", "ticket"),
        ("DiskFilling", "page"),
    ] {
        h.assert_state(name, severity, "inactive").await;
    }
    probe.memory_used.store(850, Ordering::SeqCst);
    probe.disk_used.store(900, Ordering::SeqCst);
    h.evaluate();
    h.assert_state("MemoryLow", "ticket", "firing").await;
    h.assert_state("DiskFilling", "ticket", "firing").await;
    h.assert_state("DiskFilling", "page", "inactive").await;
    probe.disk_used.store(960, Ordering::SeqCst);
    h.evaluate();
    h.assert_state("DiskFilling", "page", "firing").await;
    probe.memory_used.store(500, Ordering::SeqCst);
    probe.disk_used.store(500, Ordering::SeqCst);
    h.evaluate();
    for (name, severity) in [
        ("MemoryLow", "ticket"),
        ("DiskFilling", "ticket"),
        ("DiskFilling", "page"),
    ] {
        h.assert_state(name, severity, "inactive").await;
    }
    let health = h.app.operator_json("/health").await;
    assert_eq!(health["memoryUsagePct"], 50, "health reads the same memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluation_loop_fires_alerts_on_its_own() {
    let hook = WebhookReceiver::start().await;
    let url = hook.url.clone();
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.set("ALERT_WEBHOOK_URL", url);
        s.set("ALERT_EVAL_INTERVAL_MS", "100");
    })
    .await;
    failing_checkout(&app).await;
    hook.wait_for("CheckoutErrorRateCritical", "page", "firing").await;
    assert!(
        app.events("alert")
            .iter()
            .any(|r| r["alertName"] == "CheckoutErrorRateCritical")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resources_record_snapshots_what_runs_out() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.set("RESOURCES_INTERVAL_MS", "100")).await;
    app.client.get(app.url("/api/products")).send().await.expect("request");
    let logged = eventually(Duration::from_secs(5), || async { !app.events("resources").is_empty() }).await;
    assert!(logged);
    let record = app.events("resources").remove(0);
    for field in ["active", "idle", "max", "pending"] {
        assert!(record["pool"][field].is_number(), "pool.{field}: {record}");
    }
    assert!(record["memory"]["usageRatio"].is_number(), "{record}");
    assert!(record["disk"]["usageRatio"].is_number(), "{record}");
    let disks = record["disks"].as_array().expect("every filesystem watched");
    assert!(
        disks
            .iter()
            .any(|d| d["path"].as_str().is_some_and(|p| p.starts_with("/tmp/checkout-test-"))),
        "the database's filesystem is watched: {record}"
    );
    assert!(record["fds"]["open"].as_u64().is_some_and(|n| n > 0), "{record}");
    assert!(record["fds"]["max"].is_number(), "{record}");
    assert!(
        record["requests"]["lastMinute"].as_u64().is_some_and(|n| n >= 1),
        "{record}"
    );
    assert!(record["requests"]["errors5xxLastMinute"].is_number(), "{record}");
}
