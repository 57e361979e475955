//! The status page, rendered by a real headless Chromium while an alert is firing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// Debian's Chromium, or another Chrome on PATH.
fn browser() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| on_path(name))
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
async fn chromium(browser: &PathBuf, url: &str, extra: &[String]) -> String {
    let profile = std::env::temp_dir().join(checkout_service::domain::ids::random_id("chromium-"));
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finishes")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_degraded_an_open_breaker_and_grouped_errors_while_a_page_fires() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires Chromium for the status page test"
        );
        eprintln!("skipped: no Chromium on PATH");
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.set("ALERT_EVAL_INTERVAL_MS", "100");
        s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "1");
        s.set("PAYMENT_BREAKER_RECOVERY_MS", "600000");
    })
    .await;
    let cart = app.cart_with("usr_status", &[("SKU-MUG", 1)]).await;
    assert_eq!(app.checkout("usr_status", &cart, "tok_visa").await.status(), 201);
    app.payment_faults(json!({"errorRate": 1.0, "errorStatus": 503})).await;
    let failing = app.cart_with("usr_status", &[("SKU-MUG", 1)]).await;
    let response = app.checkout("usr_status", &failing, "tok_visa").await;
    assert_eq!(response.status(), 503);
    let error_id = response.headers()["x-error-id"].to_str().expect("ascii").to_string();
    // The circuit is open now: four more fail fast, as one group.
    let mut fast = Vec::new();
    for _ in 0..4 {
        let cart = app.cart_with("usr_status", &[("SKU-MUG", 1)]).await;
        let response = app.checkout("usr_status", &cart, "tok_visa").await;
        assert_eq!(response.status(), 503);
        fast.push(response.headers()["x-error-id"].to_str().expect("ascii").to_string());
    }
    let firing = eventually(Duration::from_secs(5), || async {
        let alerts = app.operator_json("/alerts").await;
        alerts["alerts"][0]["name"] == "CheckoutErrorRateCritical" && alerts["alerts"][0]["state"] == "firing"
    })
    .await;
    assert!(firing, "the alert fires first");

    let dom = chromium(&browser, &app.url("/status"), &["--dump-dom".to_string()]).await;
    for expected in [
        "1 ALERT FIRING",
        "CheckoutErrorRateCritical",
        "FIRING",
        "page",
        "POST /api/checkout/complete",
        "requests per minute",
        "5xx per minute",
        "p99 latency",
        // Healthy enough to serve, but not fine: amber, not green.
        r#"<span id="health-pill" class="pill warn">DEGRADED</span>"#,
        // The open breaker stands out.
        r#"<tr class="open" data-breaker="paymentGateway"><td>paymentGateway</td><td>OPEN</td></tr>"#,
        // One row per class and dependency, with its count and a sample.
        r#"<tr class="error-group"><td>UpstreamServerError</td><td>paymentGateway</td><td>1</td>"#,
        r#"<tr class="error-group"><td>CircuitOpen</td><td>paymentGateway</td><td>4</td>"#,
        error_id.as_str(),
        fast.last().expect("four").as_str(),
    ] {
        assert!(dom.contains(expected), "the page does not show {expected:?}:\n{dom}");
    }
    assert!(!dom.contains(">HEALTHY<"), "never green while a page fires");
    let errors = dom
        .split_once(r#"<div id="errors">"#)
        .and_then(|(_, rest)| rest.split_once("</div>"))
        .map(|(table, _)| table)
        .expect("the rendered error table");
    assert_eq!(
        errors.matches(r#"<tr class="error-group">"#).count(),
        2,
        "grouped, not repeated:\n{errors}"
    );
    assert!(dom.matches("<svg").count() >= 3, "three charts are drawn");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-incident.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &browser,
        &app.url("/status"),
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1100".to_string(),
        ],
    )
    .await;
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the page was taken ({size} bytes)");
}
