//! Traces: an incoming `traceparent` is continued and reaches every dependency call
//! (seen by a recording proxy in front of the sandbox), with `X-Request-Id`; the
//! records of a request carry its `traceId` and `spanId`; with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` the spans arrive at an OTLP/HTTP receiver (decoded
//! with the OTLP definitions), and a dead collector costs nothing but counted drops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{Value, json};

use crate::cli::{Process, checkout as command, free_port, stocked_database};
use crate::helpers::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_reaches_every_dependency_call_and_every_record_of_the_request() {
    let payment = Proxy::start(None).await;
    let inventory = Proxy::start(None).await;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.set("PAYMENT_GATEWAY_URL", &payment.url);
        s.set("INVENTORY_SERVICE_URL", &inventory.url);
    })
    .await;
    payment.forward_to(app.sandbox.payment_url());
    inventory.forward_to(app.sandbox.inventory_url());
    let cart = app.cart_with("usr_trace", &[("SKU-MUG", 1)]).await;
    let answer = app
        .client
        .post(app.url("/api/checkout/complete"))
        .bearer_auth(app.token("usr_trace"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("X-Request-Id", "req_traced_checkout")
        .json(&json!({"cartId": cart, "paymentToken": "tok_visa", "userId": "usr_trace"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 201);
    // The charge and the reservation during the request; the commit just after.
    let committed = eventually(Duration::from_secs(5), || async {
        inventory.seen().iter().any(|(_, path, _, _)| path.ends_with("/commit"))
    })
    .await;
    assert!(committed);
    let calls: Vec<Seen> = payment.seen().into_iter().chain(inventory.seen()).collect();
    assert!(calls.len() >= 3, "{calls:?}");
    let mut span_ids = std::collections::HashSet::new();
    for (method, path, traceparent, request_id) in &calls {
        let traceparent = traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("{method} {path} carries traceparent"));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", TRACE_ID, "01"),
            "{method} {path}: {traceparent}"
        );
        assert!(
            parts[2].len() == 16 && parts[2] != PARENT_ID,
            "a span of the call's own: {traceparent}"
        );
        span_ids.insert(parts[2].to_string());
        assert_eq!(request_id.as_deref(), Some("req_traced_checkout"), "{method} {path}");
    }
    assert_eq!(span_ids.len(), calls.len(), "each call is a span of its own");

    let records: Vec<Value> = app
        .logs
        .records()
        .into_iter()
        .filter(|r| r["requestId"] == "req_traced_checkout")
        .collect();
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record["traceId"], TRACE_ID, "{record}");
        assert!(
            record["spanId"]
                .as_str()
                .is_some_and(|s| s.len() == 16 && s != PARENT_ID),
            "{record}"
        );
    }

    // Without a traceparent a trace is started, and it is the one the calls carry.
    payment.seen.lock().expect("seen").clear();
    let cart = app.cart_with("usr_trace", &[("SKU-MUG", 1)]).await;
    let answer = app.checkout("usr_trace", &cart, "tok_visa").await;
    let request_id = answer.headers()["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(answer.status(), 201);
    let access = app
        .events("access")
        .into_iter()
        .find(|r| r["requestId"] == request_id.as_str())
        .expect("its access record");
    let trace = access["traceId"].as_str().expect("a trace ID").to_string();
    assert_eq!(trace.len(), 32);
    let charge = payment.seen()[0].clone();
    assert!(
        charge
            .2
            .as_deref()
            .is_some_and(|t| t.starts_with(&format!("00-{trace}-"))),
        "{charge:?}"
    );
    assert_eq!(charge.3.as_deref(), Some(request_id.as_str()));
}

/// An OTLP/HTTP receiver: keeps each export it is sent, decoded.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                keep.lock().expect("received").push(request);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), received)
}

fn attribute(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

async fn traced_server(endpoint: &str) -> (Process, String, TestDb, checkout_service::sandbox::Sandbox) {
    let db = stocked_database(Backend::Sqlite).await;
    let sandbox = start_sandbox().await;
    let port = free_port();
    let mut env = process_env(&db.url, &sandbox, port);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()));
    let server = Process::spawn(command(&["serve"], &env));
    let base = format!("http://127.0.0.1:{port}");
    crate::cli::wait_until_serving(&http_client(), &format!("{base}/health/live")).await;
    (server, base, db, sandbox)
}

async fn buy(base: &str, traceparent: Option<&str>) -> u16 {
    let client = http_client();
    let token = process_token("usr_otlp");
    let cart = cart_with_a_mug(&client, base, &token).await;
    let mut request = checkout_request(&client, base, &token, &cart, "usr_otlp");
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.expect("answered").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_with_their_parents_and_attributes() {
    let (endpoint, received) = otlp_receiver().await;
    let (mut server, base, _db, _sandbox) = traced_server(&endpoint).await;
    assert_eq!(buy(&base, Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await, 201);
    let spans = || {
        received
            .lock()
            .expect("received")
            .iter()
            .flat_map(|r| r.resource_spans.clone())
            .collect::<Vec<_>>()
    };
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let arrived = eventually(Duration::from_secs(10), || async {
        spans()
            .iter()
            .flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter()))
            .any(|s| s.name == "POST /api/checkout/complete" && hex(&s.trace_id) == TRACE_ID)
    })
    .await;
    assert!(arrived, "the checkout's span is exported");
    let resources = spans();
    let service = resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .find_map(|r| attribute(&r.attributes, "service.name"));
    assert_eq!(service.as_deref(), Some("checkout-service"));
    let all: Vec<_> = resources
        .iter()
        .flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.clone()))
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    let server_span = all
        .iter()
        .find(|s| s.name == "POST /api/checkout/complete")
        .expect("the request's span");
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server_span.parent_span_id),
        PARENT_ID,
        "it continues the caller's trace"
    );
    assert_eq!(
        attribute(&server_span.attributes, "http.route").as_deref(),
        Some("/api/checkout/complete")
    );
    assert_eq!(
        attribute(&server_span.attributes, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attribute(&server_span.attributes, "http.response.status_code").as_deref(),
        Some("201")
    );
    let charge = all
        .iter()
        .find(|s| s.name == "POST /v1/charges")
        .expect("the charge's span");
    assert_eq!(charge.kind, SpanKind::Client as i32);
    assert_eq!(charge.parent_span_id, server_span.span_id, "a child of the request");
    assert_eq!(
        attribute(&charge.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&charge.attributes, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        all.iter().any(|s| s.name == "POST /v1/reservations"),
        "the reservation's span"
    );
    let db = all
        .iter()
        .find(|s| attribute(&s.attributes, "db.system.name").as_deref() == Some("sqlite"))
        .expect("a database transaction's span");
    assert!(attribute(&db.attributes, "db.operation.name").is_some());
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_nothing_but_counted_drops() {
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let (mut server, base, _db, _sandbox) = traced_server(&endpoint).await;
    for _ in 0..10 {
        assert_eq!(buy(&base, None).await, 201, "requests do not notice the dead collector");
    }
    let dropped = eventually(Duration::from_secs(10), || async {
        let metrics = metrics_of(&base).await;
        series(&metrics, "otel_spans_dropped_total").is_some_and(|n| n >= 10.0)
    })
    .await;
    assert!(dropped, "the spans the collector never took are counted");
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.exit_code(Duration::from_secs(20)).await,
        0,
        "and it stops on time"
    );
}
