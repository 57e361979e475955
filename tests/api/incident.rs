//! The article's incident, reproduced on PostgreSQL: a small pool, every table the
//! checkout touches locked by another session so each query stalls, and a burst of
//! checkouts. Every request is answered within the configured bounds (503 with
//! Retry-After; no hang, no 500), `/health` answers 503 within 500 ms, and once the
//! lock is gone checkouts succeed again without a restart.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection as _;

use crate::helpers::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_under_a_burst_gets_bounded_503s_and_recovers_without_a_restart() {
    if !postgres_available().await {
        return;
    }
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.set("DB_POOL_MAX", "3");
        s.set("DB_ACQUIRE_TIMEOUT_MS", "300");
        s.set("DB_STATEMENT_TIMEOUT_MS", "600");
        s.set("REQUEST_TIMEOUT_MS", "3000");
    })
    .await;
    let mut carts = Vec::new();
    for _ in 0..40 {
        carts.push(app.cart_with("usr_burst", &[("SKU-MUG", 1)]).await);
    }

    let mut lock = sqlx::PgConnection::connect(&app.db.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut lock).await.expect("begin");
    sqlx::query(
        "LOCK TABLE carts, cart_items, checkout_attempts, orders, order_items, idempotency_keys, products \
         IN ACCESS EXCLUSIVE MODE",
    )
    .execute(&mut lock)
    .await
    .expect("lock");

    // Traffic keeps coming for the whole incident, as it does in production.
    let window = Instant::now() + Duration::from_millis(3000);
    let app = &app;
    let burst = futures_util::future::join_all(carts.iter().map(|cart| async move {
        let mut answers = Vec::new();
        while Instant::now() < window {
            let started = Instant::now();
            let response = app.checkout("usr_burst", cart, "tok_visa").await;
            let elapsed = started.elapsed();
            let retry_after = response.headers().get("retry-after").is_some();
            let (status, body) = status_and_body(response).await;
            answers.push((status, retry_after, body, elapsed));
        }
        answers
    }));
    let health = async {
        let mut answers = Vec::new();
        while Instant::now() < window {
            let started = Instant::now();
            let status = app
                .client
                .get(app.url("/health"))
                .send()
                .await
                .expect("health")
                .status()
                .as_u16();
            answers.push((status, started.elapsed()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    };
    let (answers, health) = tokio::join!(burst, health);
    let answers: Vec<_> = answers.into_iter().flatten().collect();

    let mut times: Vec<Duration> = answers.iter().map(|(_, _, _, elapsed)| *elapsed).collect();
    times.sort();
    let statuses: Vec<u16> = answers.iter().map(|(status, ..)| *status).collect();
    let health_slowest = health.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let health_503 = health.iter().filter(|(s, _)| *s == 503).count();
    let summary = format!(
        "incident test: {} checkouts from 40 clients over 3s against a locked database (pool 3, acquire 300ms, statement 600ms): \
         {} answered 503, {} answered 500; answer times p50 {:?} p90 {:?} p99 {:?} max {:?}; \
         /health polled {} times, {} answered 503, slowest {:?}",
        answers.len(),
        statuses.iter().filter(|s| **s == 503).count(),
        statuses.iter().filter(|s| **s == 500).count(),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        times[times.len() - 1],
        health.len(),
        health_503,
        health_slowest,
    );
    report("incident", &summary);

    for (status, retry_after, body, elapsed) in &answers {
        assert_eq!(*status, 503, "{summary}: {body}");
        assert!(retry_after, "every 503 has Retry-After");
        assert_eq!(body["dependency"], "database", "{body}");
        assert!(
            *elapsed < Duration::from_millis(2000),
            "bounded by acquire + statement timeouts: {elapsed:?}"
        );
    }
    assert!(health_slowest < Duration::from_millis(500), "{summary}");
    assert!(
        health_503 > 0,
        "the exhausted pool makes the instance unready: {summary}"
    );

    // Once the lock is gone every cart checks out, without a restart. A client that
    // honours Retry-After gets through: a 503 while the pool frees up (on a starved
    // CPU its first acquire can still time out) is retried after the time it names,
    // at most twice, and must be the same honest 503.
    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("unlock");
    drop(lock);
    let mut retries = 0;
    for cart in &carts {
        let mut tries = 0;
        loop {
            let response = app.checkout("usr_burst", cart, "tok_visa").await;
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
            let (status, body): (u16, Value) = status_and_body(response).await;
            if status == 201 {
                break;
            }
            let record = app
                .records_at("ERROR")
                .into_iter()
                .find(|r| r["errorId"] == body["errorId"])
                .unwrap_or_default();
            tries += 1;
            let Some(seconds) = retry_after.filter(|_| status == 503 && body["dependency"] == "database" && tries <= 2)
            else {
                panic!("recovers without a restart: {status} {body}; its record: {record}");
            };
            eprintln!("retrying after {seconds}s: {record}");
            retries += 1;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
    }
    report(
        "incident",
        &format!(
            "{summary}; after the lock: {} carts checked out, {retries} after a retry",
            carts.len()
        ),
    );
    let healthy = eventually(Duration::from_secs(5), || async {
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(healthy);
}
