//! The JSON record. [`SpanFields`] keeps each span's fields as JSON values as they
//! are recorded, and [`JsonRecord`] (the `fmt` layer's event format) writes an event
//! as one object with serde_json: the fields every record starts with, then the
//! fields of the spans it was written in (root first, a name recorded again
//! taking the latest value), then the event's own, which win over a span's of the
//! same name. Each name appears once.

use std::fmt;

use serde::ser::{SerializeMap, Serializer as _};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
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
    "disks",
    "fds",
    "requests",
    "labels",
    "unavailableSkus",
    "dropped",
];

/// Fields every record starts with; a span's or an event's field of the same name
/// is left out.
fn is_reserved(key: &str) -> bool {
    matches!(key, "timestamp" | "level" | "service" | "version" | "message")
}

/// Named values, in the order they were first recorded; a name recorded again
/// keeps its place and takes the new value.
#[derive(Default)]
pub(crate) struct Values(Vec<(&'static str, Value)>);

impl Values {
    fn put(&mut self, name: &'static str, value: Value) {
        // Dotted names are trace attributes (`http.route`), not record fields.
        if name.contains('.') {
            return;
        }
        match self.0.iter_mut().find(|(key, _)| *key == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(key, _)| *key == name).map(|(_, value)| value)
    }

    /// The text of field `name`, if it holds text.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.get(name).and_then(Value::as_str).map(str::to_string)
    }
}

impl Visit for Values {
    fn record_str(&mut self, field: &Field, value: &str) {
        let structured = STRUCTURED_FIELDS
            .contains(&field.name())
            .then(|| serde_json::from_str::<Value>(value).ok())
            .flatten();
        self.put(
            field.name(),
            structured.unwrap_or_else(|| Value::String(value.to_string())),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Not finite: null, as serde_json writes it.
        self.put(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field.name(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Keeps each span's fields, as values, in the span's extensions.
pub(crate) struct SpanFields;

impl<S> Layer<S> for SpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut values = Values::default();
        attrs.record(&mut values);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(values);
        }
    }

    fn on_record(&self, id: &Id, record: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(values) = span.extensions_mut().get_mut::<Values>()
        {
            record.record(values);
        }
    }
}

/// The `fmt` layer's span fields: none, since [`SpanFields`] keeps them.
pub(crate) struct NoFields;

impl<'writer> FormatFields<'writer> for NoFields {
    fn format_fields<R: RecordFields>(&self, _writer: Writer<'writer>, _fields: R) -> fmt::Result {
        Ok(())
    }
}

/// Formats events as the service's JSON records.
pub(crate) struct JsonRecord;

impl<S, N> FormatEvent<S, N> for JsonRecord
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut own = Values::default();
        event.record(&mut own);
        let spans: Vec<_> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .collect();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let layers: Vec<&Values> = extensions.iter().filter_map(|e| e.get::<Values>()).collect();
        let (own, layers) = (&own, &layers);
        // A span's field is written unless a later span, or the event, has it too.
        let inherited = layers.iter().enumerate().flat_map(|(depth, values)| {
            values.0.iter().filter(move |(name, value)| {
                !value.is_null()
                    && !is_reserved(name)
                    && own.get(name).is_none()
                    && layers[depth + 1..].iter().all(|later| later.get(name).is_none())
            })
        });

        let mut line = Vec::with_capacity(512);
        let mut serializer = serde_json::Serializer::new(&mut line);
        let failed = |_| fmt::Error;
        let mut record = serializer.serialize_map(None).map_err(failed)?;
        record
            .serialize_entry("timestamp", &format!("{:.3}", jiff::Timestamp::now()))
            .map_err(failed)?;
        record
            .serialize_entry("level", level_name(*event.metadata().level()))
            .map_err(failed)?;
        record.serialize_entry("service", SERVICE).map_err(failed)?;
        record.serialize_entry("version", version()).map_err(failed)?;
        record
            .serialize_entry("message", own.get("message").unwrap_or(&Value::Null))
            .map_err(failed)?;
        for (name, value) in inherited {
            record.serialize_entry(name, value).map_err(failed)?;
        }
        for (name, value) in own.0.iter().filter(|(name, _)| !is_reserved(name)) {
            record.serialize_entry(name, value).map_err(failed)?;
        }
        record.end().map_err(failed)?;
        line.push(b'\n');
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
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
