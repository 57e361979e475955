use std::sync::{Arc, Condvar, Mutex};

use serde_json::{Value, json};
use tracing::instrument::WithSubscriber as _;

use super::sink::{Bounded, Outputs, QUEUE_RECORDS};
use super::*;

#[tokio::test]
async fn a_record_carries_its_spans_fields_then_its_own_each_name_once() {
    let sink = MemorySink::default();
    async {
        let span = request_span("req_1", "POST /api/checkout/complete");
        span.record("traceId", "4bf92f3577b34da6a3ce929d0e0e4736");
        span.record("http.route", "/api/checkout/complete");
        let _entered = span.enter();
        tracing::Span::current().record("userId", "usr_456");
        tracing::Span::current().record("cartId", "cart_of_the_request");
        tracing::Span::current().record("cartId", "cart_recorded_again");
        tracing::error!(
            errorChain = r#"["outer \"x\"","inner"]"#,
            status = 500_u64,
            ratio = f64::NAN,
            cartId = "cart_of_the_record",
            "checkout failed"
        );
    }
    .with_subscriber(capture(sink.clone()))
    .await;
    let lines = sink.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].matches("\"cartId\":").count(), 1, "{}", lines[0]);
    let record: Value = serde_json::from_str(&lines[0]).expect("one JSON object per line");
    assert_eq!(record["level"], "ERROR");
    assert_eq!(record["service"], SERVICE);
    assert_eq!(record["version"], version());
    assert_eq!(record["message"], "checkout failed");
    assert_eq!(record["requestId"], "req_1");
    assert_eq!(record["endpoint"], "POST /api/checkout/complete");
    assert_eq!(record["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(record["userId"], "usr_456");
    assert_eq!(record["cartId"], "cart_of_the_record");
    assert_eq!(record["status"], 500);
    assert_eq!(record["ratio"], Value::Null);
    assert_eq!(record["errorChain"], json!(["outer \"x\"", "inner"]));
    assert!(record.get("orderId").is_none(), "fields never recorded are left out");
    assert!(
        record
            .as_object()
            .expect("an object")
            .keys()
            .all(|key| !key.contains('.')),
        "trace attributes stay out of records: {record}"
    );
    let timestamp = record["timestamp"].as_str().expect("a timestamp");
    assert!(crate::clock::parse_rfc3339_ms(timestamp).is_some(), "{timestamp}");
    assert!(timestamp.ends_with('Z') && timestamp.len() == 24, "{timestamp}");
    // The fixed fields lead, in a fixed order, then the span's, then the event's.
    let at = |key: &str| lines[0].find(&format!("\"{key}\":")).expect(key);
    let order = [
        "timestamp",
        "level",
        "service",
        "version",
        "message",
        "requestId",
        "status",
    ];
    assert!(order.windows(2).all(|pair| at(pair[0]) < at(pair[1])), "{}", lines[0]);
}

#[test]
fn a_warn_record_carries_its_request_when_info_is_off() {
    let sink = MemorySink::default();
    let dispatch = dispatch(sink.clone(), LevelFilter::WARN, LogFormat::Json);
    tracing::dispatcher::with_default(&dispatch, || {
        let span = request_span("req_2", "GET /api/carts/{cartId}");
        let _entered = span.enter();
        tracing::info!("left out");
        tracing::warn!("kept");
    });
    let records = sink.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["requestId"], "req_2");
}

#[test]
fn dependencies_below_warn_are_filtered_out() {
    let sink = MemorySink::default();
    tracing::dispatcher::with_default(&capture(sink.clone()), || {
        tracing::info!(target: "sqlx::query", "select 1");
        tracing::warn!(target: "sqlx::query", "slow statement");
    });
    let messages: Vec<_> = sink.records().iter().map(|r| r["message"].clone()).collect();
    assert_eq!(messages, vec![Value::from("slow statement")]);
}

/// An output that takes nothing until it is opened, like a pipe nobody reads.
#[derive(Clone, Default)]
struct Stuck {
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Stuck {
    fn open(&self) {
        let (open, changed) = &*self.open;
        *open.lock().expect("test lock") = true;
        changed.notify_all();
    }
}

impl std::io::Write for Stuck {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let (open, changed) = &*self.open;
        let mut guard = open.lock().expect("test lock");
        while !*guard {
            guard = changed.wait(guard).expect("test lock");
        }
        self.written.lock().expect("test lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_output_drops_records_without_waiting_and_errors_last() {
    let stuck = Stuck::default();
    let outputs = Outputs::new(vec![Bounded::new("test-log", stuck.clone())]);
    let logs = dispatch(outputs.clone(), LevelFilter::INFO, LogFormat::Json);
    let before = dropped_records();
    let started = std::time::Instant::now();
    tracing::dispatcher::with_default(&logs, || {
        // More INFO records than the queue holds: nine tenths are queued, the rest dropped.
        for n in 0..QUEUE_RECORDS {
            tracing::info!("info {n}");
        }
        // ERROR records still find room.
        for n in 0..10 {
            tracing::error!("error {n}");
        }
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "logging waited");
    let dropped = dropped_records();
    // Other tests may drop records of their own meanwhile, never fewer.
    assert!(
        dropped.0[2] - before.0[2] >= (QUEUE_RECORDS / 10) as u64 - 1,
        "{dropped:?}"
    );
    stuck.open();
    outputs.wait_until_written(std::time::Duration::from_secs(10));
    let text = String::from_utf8(stuck.written.lock().expect("test lock").clone()).expect("utf8");
    assert!(text.contains("\"error 9\""), "the ERROR records were written");
    assert!(
        text.lines().count() >= QUEUE_RECORDS - QUEUE_RECORDS / 10,
        "{}",
        text.lines().count()
    );
}
