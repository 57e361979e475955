//! Health, metrics and the API document.

use std::time::{Duration, Instant};

use checkout_service::app::App;
use checkout_service::config::{Settings, Source};
use checkout_service::telemetry::{self, MemorySink};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    async fn health_reports_in_the_seed_format(backend) {
        let app = spawn_app(backend).await;
        for path in ["/health", "/health/ready"] {
            let (status, body) = status_and_body(app.client.get(app.url(path)).send().await.expect("request")).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(body["status"], "healthy");
            assert_eq!(body["db"], "connected");
            assert_eq!(body["config"], "loaded");
            assert!(body["memoryUsagePct"].as_u64().is_some_and(|pct| pct <= 100), "{body}");
            assert_eq!(body["circuitBreakers"], json!({"paymentGateway": "CLOSED", "inventoryService": "CLOSED"}));
        }
        let live = app.client.get(app.url("/health/live")).send().await.expect("request");
        assert_eq!(
            live.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let (status, body) = status_and_body(live).await;
        assert_eq!((status, body), (200, json!({"status": "alive"})));
        app.stop().await;
    }
);

on_both_backends!(
    async fn health_turns_503_when_the_database_is_gone_and_liveness_does_not(backend) {
        let app = spawn_app(backend).await;
        app.app.store.close().await;
        let unhealthy = eventually(Duration::from_secs(5), || async {
            app.client.get(app.url("/health")).send().await.is_ok_and(|r| r.status() == 503)
        })
        .await;
        assert!(unhealthy);
        let (_, body) = status_and_body(app.client.get(app.url("/health/ready")).send().await.expect("request")).await;
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["db"], "unreachable");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("Database unreachable")), "{body}");
        let live = app.client.get(app.url("/health/live")).send().await.expect("request");
        assert_eq!(live.status(), 200, "liveness checks nothing external");
    }
);

/// A TCP server that accepts connections and never says a word.
async fn silent_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_within_500ms_when_the_database_accepts_and_never_replies() {
    let (port, _silent) = silent_listener().await;
    let sandbox = start_sandbox().await;
    let source = Source::from_pairs([
        ("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/silent")),
        ("PAYMENT_GATEWAY_URL", sandbox.payment_url()),
        ("PAYMENT_API_KEY", API_KEY.to_string()),
        ("INVENTORY_SERVICE_URL", sandbox.inventory_url()),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("DB_ACQUIRE_TIMEOUT_MS", "300".to_string()),
    ]);
    let settings = Settings::from_source(&source).expect("valid");
    let app = App::build(settings).expect("build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running =
        checkout_service::server::start(app, listener, telemetry::capture(MemorySink::default())).expect("start");
    let client = http_client();
    let url = format!("http://{}/health", running.addr);
    let mut slowest = Duration::ZERO;
    let mut last = (0, Value::Null);
    for _ in 0..30 {
        let started = Instant::now();
        last = status_and_body(client.get(&url).send().await.expect("request")).await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slowest < Duration::from_millis(500), "slowest /health took {slowest:?}");
    assert_eq!(last.0, 503, "{}", last.1);
    assert_eq!(last.1["db"], "unreachable");
    assert_eq!(last.1["error"], "Connection timeout after 300ms");
    running.shutdown().await.expect("stops");
}

on_both_backends!(
    async fn metrics_export_the_contract_series_labelled_by_route_template(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        app.cart("usr_1", &cart).await;
        app.checkout("usr_1", &cart, "tok_visa").await;
        let response = app.client.get(app.url("/metrics")).send().await.expect("request");
        assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
        let text = response.text().await.expect("text");
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/api/carts/{cartId}",status="200"} 1"#),
            "{text}"
        );
        assert!(!text.contains(&cart), "raw paths never become labels");
        assert!(text.contains(r#"checkout_total{outcome="confirmed"} 1"#));
        assert!(text.contains(r#"upstream_requests_total{dependency="paymentGateway",outcome="success"} 1"#));
        for series in [
            "http_request_duration_seconds_bucket",
            "upstream_request_duration_seconds_bucket",
            "circuit_breaker_state{dependency=\"inventoryService\"} 0",
            "db_pool_connections{state=\"active\"}",
            "db_pool_connections{state=\"idle\"}",
            "db_pool_max_connections",
            "db_pool_pending_acquires",
            "db_pool_acquire_timeouts_total",
            "process_resident_memory_bytes",
            "memory_usage_ratio",
            "disk_usage_ratio",
            "process_open_fds",
            "process_max_fds",
            "build_info{",
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        let version = checkout_service::store::migrations::expected_version();
        assert!(text.contains(&format!("schema_version=\"{version}\"")), "{text}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_its_errors() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, doc) = status_and_body(app.client.get(app.url("/openapi.json")).send().await.expect("request")).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/api/products", "get"),
        ("/api/carts", "post"),
        ("/api/carts/{cartId}", "get"),
        ("/api/carts/{cartId}/items", "post"),
        ("/api/checkout/complete", "post"),
        ("/api/orders/{orderId}", "get"),
        ("/health", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    let checkout = &doc["paths"]["/api/checkout/complete"]["post"]["responses"];
    for status in [
        "200", "201", "400", "401", "402", "403", "404", "409", "413", "415", "422", "500", "503",
    ] {
        assert!(checkout[status].is_object(), "checkout does not document {status}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    // Each error response names its codes, for client generators.
    let conflict = &checkout["409"]["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]["enum"];
    for code in ["CART_EMPTY", "CHECKOUT_IN_PROGRESS", "INVENTORY_CONFLICT"] {
        assert!(
            conflict.as_array().is_some_and(|c| c.iter().any(|v| v == code)),
            "{code}: {conflict}"
        );
    }
    let not_found = &doc["paths"]["/api/orders/{orderId}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]
        ["allOf"][1]["properties"]["error"]["enum"];
    assert_eq!(not_found, &json!(["ORDER_NOT_FOUND"]));
    // The headers every client should know of.
    assert!(checkout["201"]["headers"]["X-Request-Id"].is_object());
    assert!(checkout["500"]["headers"]["X-Error-Id"].is_object());
    assert!(checkout["503"]["headers"]["Retry-After"].is_object());
    // The operational documents are typed.
    let health = &doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(health["$ref"], "#/components/schemas/Health");
    assert_eq!(
        doc["components"]["schemas"]["Health"]["properties"]["status"]["enum"],
        json!(["healthy", "degraded", "unhealthy"])
    );
    assert!(doc["components"]["schemas"]["StatusData"].is_object());
    assert!(doc["components"]["schemas"]["Alerts"].is_object());

    // And the whole document is valid OpenAPI.
    let Some(validator) = test_tool("openapi-spec-validator") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("{}.json", checkout_service::domain::ids::random_id("openapi-")));
    std::fs::write(&path, doc.to_string()).expect("write the document");
    let output = std::process::Command::new(validator)
        .arg(&path)
        .output()
        .expect("the validator runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_with_known_labels_exists_at_zero_right_after_start() {
    let app = spawn_app(Backend::Sqlite).await;
    let text = metrics_of(&app.base).await;
    let zero = |series: &str| {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .map(|line| line[series.len()..].trim().to_string())
    };
    for series in [
        r#"checkout_total{outcome="confirmed"}"#,
        r#"checkout_total{outcome="declined"}"#,
        r#"checkout_total{outcome="unavailable"}"#,
        r#"checkout_total{outcome="error"}"#,
        r#"circuit_breaker_transitions_total{dependency="paymentGateway",to="OPEN"}"#,
        r#"circuit_breaker_transitions_total{dependency="inventoryService",to="CLOSED"}"#,
        r#"log_records_dropped_total{level="error"}"#,
        r#"log_records_dropped_total{level="info"}"#,
        "otel_spans_dropped_total",
        "http_connections_rejected_total",
        "http_accept_errors_total",
        "db_pool_acquire_timeouts_total",
    ] {
        assert_eq!(
            zero(series).as_deref(),
            Some("0"),
            "{series} at 0 from the start:\n{text}"
        );
    }
    for series in [
        "http_requests_in_flight",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(zero(series).is_some(), "{series}:\n{text}");
    }
}
