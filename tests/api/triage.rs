//! `checkout triage` on incidents recorded from the real service (by
//! scripts/record-incidents), on logs of the running code, and as a process.

use std::io::Write as _;
use std::process::Stdio;

use checkout_service::triage::{self, Options};
use serde_json::{Value, json};

use crate::cli::run;
use crate::helpers::*;

fn fixture(name: &str) -> String {
    format!("tests/fixtures/incidents/{name}.log")
}

async fn report(name: &str) -> Value {
    let options = Options {
        logs: vec![fixture(name)],
        json: true,
        ..Options::default()
    };
    let mut out = Vec::new();
    triage::run(&options, &mut out).await.expect("triage runs");
    serde_json::from_slice(&out).expect("one JSON document")
}

fn evidence(report: &Value) -> String {
    report["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| e.as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn healthy_traffic_with_client_errors_is_no_problem() {
    let report = report("healthy").await;
    assert_eq!(report["category"], "no_problem");
    assert!(evidence(&report).contains("no 5xx"), "{report}");
    assert!(
        report["counts"]["errors4xx"].as_u64().is_some_and(|n| n >= 7),
        "declines and conflicts are 4xx: {report}"
    );
    assert_eq!(report["errorGroups"], json!([]));
}

#[tokio::test]
async fn a_payment_outage_is_a_dependency_failure() {
    let report = report("dependency-failure").await;
    assert_eq!(report["category"], "dependency_failure");
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.contains("payment gateway")),
        "{report}"
    );
    assert!(
        evidence(&report).contains("circuit breaker paymentGateway went CLOSED -> OPEN"),
        "{report}"
    );
    let classes: Vec<&str> = report["errorGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["errorClass"].as_str())
        .collect();
    assert!(classes.contains(&"CircuitOpen"), "{classes:?}");
    let cause = report["rootCause"].as_str().expect("a root cause");
    assert!(
        !cause.starts_with("CircuitOpen"),
        "the open circuit is a symptom, not the cause: {cause}"
    );
    assert!(
        report["symptoms"].to_string().contains("CircuitOpen"),
        "{}",
        report["symptoms"]
    );
}

#[tokio::test]
async fn an_outage_that_ended_is_reported_as_stopped_and_when() {
    let report = report("outage-recovered").await;
    assert_eq!(report["category"], "dependency_failure");
    let summary = report["summary"].as_str().expect("summary");
    assert!(summary.contains("The payment gateway was failing"), "{summary}");
    assert!(
        summary.contains("It stopped at 20") && summary.contains("no 5xx since"),
        "{summary}"
    );
    assert!(
        evidence(&report).contains("went OPEN -> HALF_OPEN") || evidence(&report).contains("-> CLOSED"),
        "{report}"
    );
    assert!(
        !report["rootCause"]
            .as_str()
            .unwrap_or("CircuitOpen")
            .starts_with("CircuitOpen"),
        "{report}"
    );
}

#[tokio::test]
async fn a_restart_onto_a_schema_that_lost_a_table_is_a_bad_deployment() {
    let report = report("restart-broken-schema").await;
    assert_eq!(report["category"], "bad_deployment", "{report}");
    let summary = report["summary"].as_str().expect("summary");
    assert!(
        summary.contains("no such table: order_items"),
        "SQLite's own words: {summary}"
    );
    assert!(
        !summary.contains("SQL logic error"),
        "not the generic text of the code: {summary}"
    );
    assert!(report["fix"].as_str().is_some_and(|f| f.contains("Roll back")));
}

#[tokio::test]
async fn a_gateway_refusing_our_requests_as_malformed_is_a_bug() {
    let report = report("unhandled-exception").await;
    assert_eq!(report["category"], "unhandled_exception");
    assert!(
        report["summary"].as_str().is_some_and(|s| s.starts_with("A bug:")),
        "{report}"
    );
    let top = &report["errorGroups"][0];
    assert_eq!(top["errorClass"], "UpstreamContractError");
    assert_eq!(top["count"], 12);
    assert_eq!(top["endpoints"], json!(["POST /api/checkout/complete"]));
    assert!(
        top["sampleErrorIds"][0]
            .as_str()
            .is_some_and(|id| id.starts_with("ERR-")),
        "{top}"
    );
    for field in ["firstSeen", "lastSeen", "message"] {
        assert!(top[field].is_string(), "{field}: {top}");
    }
}

#[tokio::test]
async fn missing_and_bad_variables_at_startup_are_misconfiguration() {
    let report = report("misconfiguration-startup").await;
    assert_eq!(report["category"], "misconfiguration");
    let text = evidence(&report);
    assert!(
        text.contains("Required environment variable 'PAYMENT_API_KEY' is not set."),
        "{text}"
    );
    assert!(text.contains("'JWT_SECRET' must be at least 32 bytes"), "{text}");
    assert!(text.contains("3 attempts"), "{text}");
}

#[tokio::test]
async fn a_refused_api_key_is_misconfiguration() {
    let report = report("misconfiguration-api-key").await;
    assert_eq!(report["category"], "misconfiguration");
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("The payment gateway refuses this service's credentials")),
        "{report}"
    );
    assert_eq!(report["errorGroups"][0]["errorClass"], "UpstreamAuthError");
}

#[tokio::test]
async fn errors_that_begin_with_a_new_version_are_a_bad_deployment() {
    let report = report("bad-deployment-runtime").await;
    assert_eq!(report["category"], "bad_deployment");
    assert!(
        evidence(&report).contains("deployed over 0.1.0+1a2b3c4d5e6f (no 5xx before the deploy)"),
        "{report}"
    );
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.contains("0.1.0+7a8b9c0d1e2f") && s.contains("no such table")),
        "{report}"
    );
    assert_eq!(report["deploys"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_new_version_that_finds_the_schema_behind_is_a_bad_deployment() {
    let report = report("bad-deployment-schema").await;
    assert_eq!(report["category"], "bad_deployment");
    let text = evidence(&report);
    assert!(
        text.contains("database schema is at version 0 but this build needs 3; run 'checkout migrate'"),
        "{text}"
    );
    assert!(
        text.contains("the failing build is 0.1.0+7a8b9c0d1e2f, the last one that ran was 0.1.0+1a2b3c4d5e6f"),
        "{text}"
    );
    assert!(report["fix"].as_str().is_some_and(|f| f.contains("Roll back")));
}

#[tokio::test]
async fn a_pool_at_its_limit_is_the_cause_and_the_timeouts_its_symptoms() {
    let report = report("resource-exhaustion").await;
    assert_eq!(report["category"], "resource_exhaustion");
    let cause = report["rootCause"].as_str().expect("root cause");
    assert!(
        cause.contains("3 of 3 connections in use") && cause.contains("callers waiting"),
        "{cause}"
    );
    assert!(report["symptoms"].as_array().is_some_and(|s| !s.is_empty()), "{report}");
    assert!(evidence(&report).contains("it grew with load"), "{report}");
    assert_eq!(report["resources"]["databasePool"]["value"]["max"], 3);
}

#[tokio::test]
async fn since_keeps_only_the_end_of_the_logs() {
    let options = |since| Options {
        logs: vec![fixture("resource-exhaustion")],
        json: true,
        since,
        ..Options::default()
    };
    let all = checkout_service::triage::analyze(&options(None).logs, None).expect("read");
    let tail =
        checkout_service::triage::analyze(&options(None).logs, Some(std::time::Duration::from_secs(3))).expect("read");
    assert!(tail.records < all.records, "{} < {}", tail.records, all.records);
    assert_eq!(tail.last_ms, all.last_ms);
    assert!(tail.first_ms.expect("records") >= all.last_ms.expect("records") - 3000);
}

#[tokio::test]
async fn the_command_prints_text_reads_gzip_and_stdin_and_finds_a_request_by_error_id() {
    let (code, text, _) = run(&["triage", "--logs", &fixture("unhandled-exception")], &[]).await;
    assert_eq!(code, 0);
    for expected in [
        "category: unhandled_exception",
        "evidence:",
        "error groups (5xx)",
        "fix:",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }

    let gz = std::env::temp_dir()
        .join(checkout_service::domain::ids::random_id("triage-"))
        .with_extension("log.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).expect("create"), flate2::Compression::fast());
    encoder
        .write_all(&std::fs::read(fixture("dependency-failure")).expect("fixture"))
        .expect("compress");
    encoder.finish().expect("finish");
    let (code, json_text, _) = run(&["triage", "--json", "--logs", gz.to_str().expect("path")], &[]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).expect("json")["category"],
        "dependency_failure"
    );
    let _ = std::fs::remove_file(gz);

    let mut child = crate::cli::checkout(&["triage", "--json", "--logs", "-"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let bytes = std::fs::read(fixture("resource-exhaustion")).expect("fixture");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &bytes)
        .await
        .expect("feed");
    drop(stdin);
    let output = child.wait_with_output().await.expect("finishes");
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).expect("json")["category"],
        "resource_exhaustion"
    );

    let report = report("unhandled-exception").await;
    let error_id = report["errorGroups"][0]["sampleErrorIds"][0]
        .as_str()
        .expect("an error id")
        .to_string();
    for source in [fixture("unhandled-exception"), "-".to_string()] {
        let mut command = crate::cli::checkout(&["triage", "--error-id", &error_id, "--logs", &source], &[]);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        if source == "-" {
            let bytes = std::fs::read(fixture("unhandled-exception")).expect("fixture");
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &bytes)
                .await
                .expect("feed");
        }
        drop(stdin);
        let output = child.wait_with_output().await.expect("finishes");
        let text = String::from_utf8_lossy(&output.stdout);
        let records: Vec<Value> = text
            .lines()
            .skip(1)
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(
            records
                .iter()
                .any(|r| r["errorId"] == error_id.as_str() && r["level"] == "ERROR"),
            "{source}: {text}"
        );
        assert!(
            records.iter().any(|r| r["event"] == "access" && r["status"] == 500),
            "{source}: {text}"
        );
        let request = &records[0]["requestId"];
        assert!(
            records.iter().all(|r| &r["requestId"] == request),
            "one request only: {text}"
        );
    }
    let (code, text, _) = run(
        &["triage", "--error-id", "ERR-0-NOPE00", "--logs", &fixture("healthy")],
        &[],
    )
    .await;
    assert_eq!((code, text.trim()), (0, "no record has errorId ERR-0-NOPE00"));
    let (code, _, _) = run(&["triage", "--logs", "/no/such/file.log"], &[]).await;
    assert_eq!(code, 1, "unreadable logs are an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_reads_the_logs_of_the_running_code_and_a_live_instance() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.set("PAYMENT_BREAKER_FAILURE_THRESHOLD", "2")).await;
    for _ in 0..3 {
        let cart = app.cart_with("usr_live", &[("SKU-MUG", 1)]).await;
        assert_eq!(app.checkout("usr_live", &cart, "tok_visa").await.status(), 201);
    }
    app.payment_faults(json!({"refuse": true})).await;
    for _ in 0..4 {
        let cart = app.cart_with("usr_live", &[("SKU-MUG", 1)]).await;
        assert_eq!(app.checkout("usr_live", &cart, "tok_visa").await.status(), 503);
    }
    let path = std::env::temp_dir()
        .join(checkout_service::domain::ids::random_id("live-"))
        .with_extension("log");
    std::fs::write(&path, app.logs.lines().join("\n")).expect("write logs");
    let options = Options {
        logs: vec![path.display().to_string()],
        url: Some(app.base.clone()),
        json: true,
        ..Options::default()
    };
    let mut out = Vec::new();
    triage::run(&options, &mut out).await.expect("triage runs");
    let report: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(report["category"], "dependency_failure", "{report}");
    assert!(
        evidence(&report).contains("live: the paymentGateway circuit is OPEN"),
        "{report}"
    );
    assert_eq!(report["resources"]["live"]["health"], 200);
    let _ = std::fs::remove_file(path);
}
