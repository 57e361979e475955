//! The JSON record: tracing-subscriber's `fmt` layer stores each span's fields as
//! JSON (`JsonFields`), and [`JsonRecord`] writes an event as one object with
//! serde_json: the fields every record starts with, then the fields of the spans it
//! was written in (root first, a name recorded again taking the latest value), then
//! the event's own, which win over a span's of the same name. Each name appears
//! once.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::{SERVICE, version};

/// Fields whose values are JSON documents, written into the record as JSON rather
/// than as strings (`errorChain` is a list, `config` an object, ...).
const STRUCTURED_FIELDS: &[&str] = &[
    "errorChain",
    "config",
    "pool",
    "memory",
    "disk",
    "fds",
    "requests",
    "labels",
    "unavailableSkus",
    "dropped",
];

/// Fields every record starts with; a span's or an event's field of the same name
/// is left out.
fn is_reserved(key: &str) -> bool {
    matches!(key, "timestamp" | "level" | "service" | "version")
}

/// Formats events as the service's JSON records.
pub(crate) struct JsonRecord;

impl<S, N> FormatEvent<S, N> for JsonRecord
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut record = Map::with_capacity(24);
        record.insert(
            "timestamp".into(),
            Value::String(format!("{:.3}", jiff::Timestamp::now())),
        );
        record.insert(
            "level".into(),
            Value::String(level_name(*event.metadata().level()).into()),
        );
        record.insert("service".into(), Value::String(SERVICE.into()));
        record.insert("version".into(), Value::String(version().into()));
        record.insert("message".into(), Value::String(String::new()));
        for span in ctx.event_scope().into_iter().flat_map(|scope| scope.from_root()) {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                continue;
            };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                for (key, value) in fields {
                    if !value.is_null() && !is_reserved(&key) {
                        record.insert(key, value);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut record));
        let line = serde_json::to_string(&record).map_err(|_| fmt::Error)?;
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Collects an event's fields into its record.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if !is_reserved(field.name()) {
            self.0.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let structured = STRUCTURED_FIELDS
            .contains(&field.name())
            .then(|| serde_json::from_str::<Value>(value).ok())
            .flatten()
            .filter(|v| v.is_array() || v.is_object());
        self.put(field, structured.unwrap_or_else(|| Value::String(value.to_string())));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Not finite: null, as serde_json writes it.
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}
