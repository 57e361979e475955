//! The inbound edges, tried as an attacker or a careless operator would, against the
//! real binary: whatever a client, a log reader or a flood does, legitimate requests
//! are still answered promptly, nothing is left behind, and the server recovers
//! without a restart.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;

use crate::cli::{checkout, free_port, migrated_database, run, wait_until_serving};
use crate::helpers::*;

/// A migrated database with the demo catalog, and the environment of a `serve`
/// process on it, listening on the returned port.
pub async fn served_database(
    backend: Backend,
    sandbox: &checkout_service::sandbox::Sandbox,
) -> (TestDb, Vec<(&'static str, String)>, u16) {
    let db = migrated_database(backend).await;
    let port = free_port();
    let env = process_env(&db.url, sandbox, port);
    let catalog = std::env::current_dir().expect("cwd").join("catalog/demo.json");
    let (code, _, stderr) = run(&["catalog", "import", catalog.to_str().expect("path")], &env[..1]).await;
    assert_eq!(code, 0, "{stderr}");
    (db, env, port)
}

/// A whole purchase by a legitimate user: cart, item, checkout. Returns how long
/// the slowest of its requests took, and the checkout's status.
pub async fn purchase(client: &reqwest::Client, base: &str, user: &str) -> (Duration, u16) {
    let token = process_token(user);
    let mut slowest = Duration::ZERO;
    let mut timed = |started: Instant| slowest = slowest.max(started.elapsed());
    let started = Instant::now();
    let cart = json_answer(client.post(format!("{base}/api/carts")).bearer_auth(&token)).await;
    timed(started);
    let cart_id = cart["cartId"].as_str().expect("a cart").to_string();
    let started = Instant::now();
    let added = client
        .post(format!("{base}/api/carts/{cart_id}/items"))
        .bearer_auth(&token)
        .json(&json!({"sku": "SKU-MUG", "quantity": 1}))
        .send()
        .await
        .expect("an answer");
    timed(started);
    assert_eq!(added.status(), 200);
    let started = Instant::now();
    let checkout = client
        .post(format!("{base}/api/checkout/complete"))
        .bearer_auth(&token)
        .header("Idempotency-Key", checkout_service::domain::ids::random_id("key_"))
        .json(&json!({"cartId": cart_id, "paymentToken": "tok_visa", "userId": user}))
        .send()
        .await
        .expect("an answer");
    timed(started);
    (slowest, checkout.status().as_u16())
}

/// The value of one series in a Prometheus text page.
pub fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_costs_log_records_never_answers() {
    let sandbox = start_sandbox().await;
    let (_db, env, port) = served_database(Backend::Sqlite, &sandbox).await;
    let mut command = checkout(&["serve"], &env);
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = command.spawn().expect("spawn checkout");
    // Kept open and never read: once the pipe's buffer is full, every write to
    // stdout would wait forever.
    let _unread = server.stdout.take();
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    wait_until_serving(&client, &format!("{base}/health/live")).await;

    // More access records than the pipe and the log queue hold together.
    let flood = futures_util::stream::iter(0..24_000)
        .map(|_| client.get(format!("{base}/health/live")).send())
        .buffer_unordered(32)
        .filter(|answer| std::future::ready(answer.as_ref().is_ok_and(|r| r.status() == 200)))
        .count();
    let answered = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood is answered");
    assert_eq!(answered, 24_000);

    let started = Instant::now();
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .expect("liveness");
    assert_eq!(live.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let (slowest, status) = purchase(&client, &base, "usr_pipe").await;
    assert_eq!(status, 201);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dropped = series(&metrics, "log_records_dropped_total{level=\"info\"}").expect("the series exists");
    assert!(dropped > 0.0, "{dropped}");
    report(
        "stdout-unread",
        &format!(
            "stdout unread: 24000 requests answered, {dropped} INFO records dropped, a purchase's slowest request {slowest:?}"
        ),
    );

    // Stopping does not wait on the pipe either.
    // SAFETY: sending a signal to a child this test spawned and still owns.
    assert_eq!(
        unsafe { libc::kill(server.id().expect("running") as i32, libc::SIGTERM) },
        0
    );
    let exited = tokio::time::timeout(Duration::from_secs(15), server.wait()).await;
    assert!(matches!(exited, Ok(Ok(status)) if status.success()), "{exited:?}");
}
