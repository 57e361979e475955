//! A fleet behind a real load balancer: HAProxy (Debian's package) in front of two
//! `checkout serve` processes on one PostgreSQL database, polling `/health/ready`,
//! under steady load with dependencies slow enough that requests are in flight.
//! Restarting each instance in turn with SIGTERM fails no request; `kill -9` fails
//! only the requests in flight on that instance; a payment outage leaves both
//! instances in rotation, answering the service's own JSON 503; and afterwards
//! every cart has at most one order and the gateway's net charges are the orders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::cli::{Process, checkout, free_port, stocked_database, wait_until_serving};
use crate::helpers::*;

/// One `checkout serve` process, restartable on its port.
struct Instance {
    name: &'static str,
    port: u16,
    env: Vec<(&'static str, String)>,
    process: Option<Process>,
}

impl Instance {
    async fn start(&mut self) {
        self.process = Some(Process::spawn(checkout(&["serve"], &self.env)));
        wait_until_serving(&http_client(), &format!("http://127.0.0.1:{}/health/ready", self.port)).await;
    }

    fn signal(&self, signal: i32) {
        self.process.as_ref().expect("running").signal(signal);
    }

    async fn exited(&mut self) -> i32 {
        let mut process = self.process.take().expect("running");
        process.exit_code(Duration::from_secs(30)).await
    }
}

/// HAProxy in front of `backends`, checking their readiness every 100 ms.
struct Balancer {
    port: u16,
    _child: tokio::process::Child,
    _config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Balancer {
    async fn start(backends: &[(&str, u16)]) -> Balancer {
        let port = free_port();
        let servers: String = backends
            .iter()
            .map(|(name, port)| format!("    server {name} 127.0.0.1:{port} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 4000\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
             \x20   retries 3\n    option redispatch\n\
             frontend shop\n    bind 127.0.0.1:{port}\n    default_backend checkout\n\
             backend checkout\n    option httpchk GET /health/ready\n    http-check expect status 200\n\
             \x20   default-server inter 100ms fall 1 rise 2\n{servers}"
        );
        let path = std::env::temp_dir().join(format!("haproxy-{}.cfg", checkout_service::domain::ids::random_id("")));
        std::fs::write(&path, config).expect("write the HAProxy configuration");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy runs (Debian package haproxy)");
        wait_until_serving(&http_client(), &format!("http://127.0.0.1:{port}/health/live")).await;
        Balancer {
            port,
            _child: child,
            _config: tempfile_path::TempPath(path),
        }
    }
}

/// Buyers through the balancer, each making purchases one after another until told
/// to stop; every request's status is kept (0 for a failed exchange).
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    requests: Arc<AtomicUsize>,
    buyers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: String, buyers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let handles = (0..buyers)
            .map(|n| {
                let (stop, failures, requests, base) = (stop.clone(), failures.clone(), requests.clone(), base.clone());
                tokio::spawn(async move {
                    let client = http_client();
                    let user = format!("usr_fleet_{n}");
                    let token = process_token(&user);
                    // Bounded: at most 2,000 purchases each.
                    for _ in 0..2000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let fail = |what: String| failures.lock().expect("failures").push((Instant::now(), what));
                        let cart = client
                            .post(format!("{base}/api/carts"))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        requests.fetch_add(1, Ordering::Relaxed);
                        let cart_id = match cart {
                            Ok(r) if r.status() == 201 => r
                                .json::<Value>()
                                .await
                                .ok()
                                .and_then(|v| v["cartId"].as_str().map(str::to_string)),
                            Ok(r) => {
                                fail(format!("create cart: {}", r.status()));
                                None
                            }
                            Err(error) => {
                                fail(format!("create cart: {error}"));
                                None
                            }
                        };
                        let Some(cart_id) = cart_id else { continue };
                        let added = client
                            .post(format!("{base}/api/carts/{cart_id}/items"))
                            .bearer_auth(&token)
                            .json(&json!({"sku": "SKU-MUG", "quantity": 1}))
                            .send()
                            .await;
                        requests.fetch_add(1, Ordering::Relaxed);
                        match added {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => {
                                fail(format!("add item: {}", r.status()));
                                continue;
                            }
                            Err(error) => {
                                fail(format!("add item: {error}"));
                                continue;
                            }
                        }
                        let paid = client
                            .post(format!("{base}/api/checkout/complete"))
                            .bearer_auth(&token)
                            .json(&json!({"cartId": cart_id, "paymentToken": "tok_visa", "userId": user}))
                            .send()
                            .await;
                        requests.fetch_add(1, Ordering::Relaxed);
                        match paid {
                            Ok(r) if r.status() == 201 => {}
                            Ok(r) => fail(format!("checkout: {}", r.status())),
                            Err(error) => fail(format!("checkout: {error}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            failures,
            requests,
            buyers: handles,
        }
    }

    fn failures_since(&self, since: Instant) -> Vec<String> {
        self.failures
            .lock()
            .expect("failures")
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, what)| what.clone())
            .collect()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for buyer in self.buyers {
            let _ = tokio::time::timeout(Duration::from_secs(30), buyer).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_loses_nothing_to_restarts_crashes_or_a_payment_outage() {
    if !postgres_available().await {
        return;
    }
    if on_path("haproxy").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires HAProxy (apt-get install haproxy)"
        );
        eprintln!("HAProxy is not installed: the fleet test is SKIPPED (apt-get install haproxy)");
        return;
    }
    let db = stocked_database(Backend::Postgres).await;
    let sandbox = start_sandbox().await;
    // Slow enough dependencies that requests are in flight at every moment.
    sandbox
        .payment_faults
        .set(serde_json::from_value(json!({"latencyMs": 40})).expect("faults"));
    let mut instances = Vec::new();
    for name in ["a", "b"] {
        let port = free_port();
        let mut env = process_env(&db.url, &sandbox, port);
        env.extend([
            ("SHUTDOWN_DRAIN_DELAY_MS", "1000".to_string()),
            ("PAYMENT_BREAKER_FAILURE_THRESHOLD", "2".to_string()),
            ("PAYMENT_BREAKER_RECOVERY_MS", "3000".to_string()),
            ("INSTANCE_ID", format!("fleet-{name}")),
        ]);
        let mut instance = Instance {
            name,
            port,
            env,
            process: None,
        };
        instance.start().await;
        instances.push(instance);
    }
    let balancer = Balancer::start(&[("a", instances[0].port), ("b", instances[1].port)]).await;
    let base = format!("http://127.0.0.1:{}", balancer.port);
    let load = Load::start(base.clone(), 4);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A rolling restart: each instance in turn, SIGTERM, then started again.
    let mut restarts = Vec::new();
    for instance in &mut instances {
        let since = Instant::now();
        instance.signal(libc::SIGTERM);
        assert_eq!(instance.exited().await, 0, "{} exits 0", instance.name);
        instance.start().await;
        // Back in rotation once HAProxy has seen it ready twice.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let failed = load.failures_since(since);
        restarts.push(failed.len());
        assert!(
            failed.is_empty(),
            "restarting {} failed requests: {failed:?}",
            instance.name
        );
    }

    // A crash: only what was in flight on that instance may fail.
    let since = Instant::now();
    instances[0].signal(libc::SIGKILL);
    let _ = instances[0].exited().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let crashed = load.failures_since(since);
    assert!(
        crashed.len() <= 4,
        "at most one request in flight per buyer: {crashed:?}"
    );
    instances[0].start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = load.requests.load(Ordering::Relaxed);
    load.stop().await;

    // A payment outage shared by the fleet: both stay in rotation and answer it.
    sandbox
        .payment_faults
        .set(serde_json::from_value(json!({"refuse": true})).expect("faults"));
    let client = http_client();
    let token = process_token("usr_outage");
    let mut checkout_answers = Vec::new();
    for _ in 0..12 {
        let cart_id = cart_with_a_mug(&client, &base, &token).await;
        let answer = checkout_request(&client, &base, &token, &cart_id, "usr_outage")
            .send()
            .await
            .expect("answered");
        let retry_after = answer.headers().get("retry-after").is_some();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        checkout_answers.push((retry_after, body));
    }
    assert!(
        checkout_answers.iter().all(|(retry_after, body)| *retry_after
            && body["error"] == "SERVICE_TEMPORARILY_UNAVAILABLE"
            && body["dependency"] == "paymentGateway"),
        "{checkout_answers:?}"
    );
    for instance in &instances {
        let ready = client
            .get(format!("http://127.0.0.1:{}/health/ready", instance.port))
            .send()
            .await
            .expect("readiness");
        assert_eq!(ready.status(), 200, "{} stays in rotation", instance.name);
        let body: Value = ready.json().await.expect("json");
        assert_eq!(body["status"], "degraded", "{body}");
    }
    for _ in 0..10 {
        let products = client
            .get(format!("{base}/api/products"))
            .send()
            .await
            .expect("products");
        assert_eq!(products.status(), 200, "the catalog is served through the outage");
    }
    sandbox
        .payment_faults
        .set(serde_json::from_value(json!({})).expect("faults"));

    // Afterwards: the reconcilers settle what the crash and the outage left, and
    // every cart has at most one order, each paid once.
    let settled = eventually(Duration::from_secs(60), || async {
        count(
            &db,
            "SELECT COUNT(*) FROM checkout_attempts WHERE state IN ('RESERVING', 'CHARGING')",
        )
        .await
            == 0
    })
    .await;
    assert!(settled, "every attempt settled");
    let orders = count(&db, "SELECT COUNT(*) FROM orders").await;
    let doubled = count(
        &db,
        "SELECT COUNT(*) FROM (SELECT cart_id FROM orders GROUP BY cart_id HAVING COUNT(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0);
    let ledger: Value = json_answer(client.get(format!("{}/_control/ledger", sandbox.payment_url()))).await;
    let net = ledger["charges"]
        .as_array()
        .expect("charges")
        .iter()
        .filter(|c| c["status"] == "succeeded" && c["refunded"] == false)
        .count();
    assert_eq!(net as i64, orders, "the gateway's net charges are the orders");
    report(
        "fleet",
        &format!(
            "fleet: {served} requests through HAProxy; failed requests per SIGTERM restart {restarts:?}; \
             {} failed when an instance was killed; {orders} orders, {net} net charges",
            crashed.len()
        ),
    );
    for instance in &mut instances {
        instance.signal(libc::SIGTERM);
        let _ = instance.exited().await;
    }
    drop(balancer);
}
