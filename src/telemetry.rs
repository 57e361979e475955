//! Structured logs: one JSON object per line (or a readable line with
//! `LOG_FORMAT=pretty`) on stdout and, with `LOG_DIR`, in daily-rotated files.
//! Lines are collected in memory and written in batches every 50 ms by one thread,
//! so logging never makes a request wait for I/O; none is ever dropped.
//!
//! Every record carries `timestamp`, `level`, `service`, `version` and `message`;
//! the fields of the request being handled (`requestId`, `endpoint`, `userId`, ...)
//! and of enclosing spans are flattened into it, so a single line is enough to place
//! an error. The subscriber is built by plain functions that take their sinks, so
//! tests capture logs in memory and each in-process app logs to its own [`Dispatch`].

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use std::sync::Condvar;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber, span};
use tracing_appender::rolling::{Builder as RollingBuilder, Rotation};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::clock;
use crate::json;

/// The `service` field of every record.
pub const SERVICE: &str = "checkout-service";

/// The commit this binary was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("CHECKOUT_GIT_COMMIT");

/// The build's version: the package version plus the commit, so that a version
/// change in the logs marks a deploy.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        if GIT_COMMIT == "unknown" {
            env!("CARGO_PKG_VERSION").to_string()
        } else {
            format!("{}+{GIT_COMMIT}", env!("CARGO_PKG_VERSION"))
        }
    })
}

/// Fields whose values are JSON documents and are embedded as such, not as strings.
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
];

/// Fields every record starts with; an event or span field of the same name is dropped
/// rather than written twice.
fn is_reserved(key: &str) -> bool {
    // A match, not a list: it compares lengths first, and it runs for every field of every record.
    matches!(key, "timestamp" | "level" | "service" | "version" | "message")
}

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default, and what `checkout triage` reads).
    Json,
    /// `timestamp LEVEL message key=value ...`, for people reading a terminal.
    Pretty,
}

/// Where log lines go and at what level.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Most verbose level of this service's own records (dependencies log at WARN).
    pub level: LevelFilter,
    /// Line format.
    pub format: LogFormat,
    /// With a directory, records are also written to `checkout.YYYY-MM-DD.log` there.
    pub dir: Option<PathBuf>,
    /// How many daily files to keep.
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LevelFilter::INFO,
            format: LogFormat::Json,
            dir: None,
            max_files: 7,
        }
    }
}

/// A destination for finished log lines (each ends in `\n`).
pub trait LineSink: Send + Sync + 'static {
    /// Writes one line; a failing sink must not fail the caller.
    fn write_line(&self, line: &[u8]);
}

/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is written at once, without waiting for the period.
const FLUSH_AT: usize = 256 * 1024;
/// A buffer this full makes writers wait: lines are never dropped.
const BLOCK_AT: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread early.
    full: Condvar,
    /// Wakes callers waiting for room.
    room: Condvar,
    /// Held while a batch is taken and written, so batches reach the output in order
    /// whoever writes them.
    output: Mutex<Box<dyn std::io::Write + Send>>,
    /// How often writers woke the writer thread early.
    #[cfg(test)]
    wakes: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Takes everything pending and writes it; returns whether the sink is closed.
    fn write_pending(&self, batch: &mut Vec<u8>) -> bool {
        let mut output = self.output.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let closed = {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::swap(batch, &mut pending.lines);
            pending.closed
        };
        self.room.notify_all();
        if !batch.is_empty() {
            // Nowhere is left to report a failed log write; the next batch tries again.
            let _ = output.write_all(batch);
            let _ = output.flush();
            batch.clear();
        }
        closed
    }
}

/// Collects lines in memory and writes them in batches from one thread, so a
/// request never waits for a write or wakes another thread per line.
struct BatchSink(Arc<Shared>);

impl LineSink for BatchSink {
    fn write_line(&self, line: &[u8]) {
        let mut pending = self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while pending.lines.len() >= BLOCK_AT && !pending.closed {
            pending = self
                .0
                .room
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        // Only the line that fills the buffer wakes the writer: every wake is a system
        // call, and the lines after it, until the writer has taken the batch, would
        // each make one more.
        if before < FLUSH_AT && pending.lines.len() >= FLUSH_AT {
            #[cfg(test)]
            self.0.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.full.notify_one();
        }
    }
}

/// Flushes and stops a [`BatchSink`]'s writer thread when dropped.
struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchGuard {
    /// Writes every line logged so far before returning.
    fn flush(&self) {
        self.shared.write_pending(&mut Vec::new());
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.closed = true;
        }
        self.shared.full.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn batch_sink<W: std::io::Write + Send + 'static>(writer: W, name: &str) -> std::io::Result<(BatchSink, BatchGuard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        full: Condvar::new(),
        room: Condvar::new(),
        output: Mutex::new(Box::new(writer)),
        #[cfg(test)]
        wakes: std::sync::atomic::AtomicUsize::new(0),
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let mut batch = Vec::with_capacity(FLUSH_AT);
        loop {
            {
                let pending = worker.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let _woken = worker
                    .full
                    .wait_timeout_while(pending, FLUSH_EVERY, |p| p.lines.len() < FLUSH_AT && !p.closed)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if worker.write_pending(&mut batch) {
                return;
            }
        }
    })?;
    Ok((
        BatchSink(shared.clone()),
        BatchGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Keeps lines in memory: for tests, and anywhere records must be inspected.
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<String>>>);

impl MemorySink {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|lines| lines.clone()).unwrap_or_default()
    }

    /// Every line written so far, parsed as JSON (lines that are not JSON are skipped).
    pub fn records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl LineSink for MemorySink {
    fn write_line(&self, line: &[u8]) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(String::from_utf8_lossy(line).trim_end().to_string());
        }
    }
}

/// A running log pipeline. Dropping it flushes buffered lines.
pub struct Telemetry {
    /// The subscriber that writes this pipeline's records.
    pub dispatch: Dispatch,
    guards: Vec<BatchGuard>,
}

impl Telemetry {
    /// Writes every record logged so far, so that what the caller prints next
    /// appears after them.
    pub fn flush(&self) {
        for guard in &self.guards {
            guard.flush();
        }
    }
}

/// Builds the pipeline for a process: stdout, plus daily files when `config.dir` is set.
pub fn init(config: &LogConfig) -> std::io::Result<Telemetry> {
    let mut sinks: Vec<Arc<dyn LineSink>> = Vec::new();
    let mut guards = Vec::new();
    let (stdout, guard) = batch_sink(std::io::stdout(), "checkout-log-stdout")?;
    sinks.push(Arc::new(stdout));
    guards.push(guard);
    if let Some(dir) = &config.dir {
        std::fs::create_dir_all(dir)?;
        let appender = RollingBuilder::new()
            .rotation(Rotation::DAILY)
            .filename_prefix("checkout")
            .filename_suffix("log")
            .max_log_files(config.max_files.max(1))
            .build(dir)
            .map_err(std::io::Error::other)?;
        let (files, guard) = batch_sink(appender, "checkout-log-files")?;
        sinks.push(Arc::new(files));
        guards.push(guard);
    }
    Ok(Telemetry {
        dispatch: dispatch(sinks, config.level, config.format),
        guards,
    })
}

/// A subscriber writing this service's records at `level` (dependencies at WARN) to `sinks`.
pub fn dispatch(sinks: Vec<Arc<dyn LineSink>>, level: LevelFilter, format: LogFormat) -> Dispatch {
    let filter = Targets::new()
        .with_target("checkout_service", level)
        .with_target("checkout", level)
        .with_default(LevelFilter::WARN.min(level));
    // One layer writes every record, so the filter is global: spans and events it
    // turns away are never built, and no per-layer filter is consulted per span.
    Dispatch::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(LogLayer { sinks, format }),
    )
}

/// A subscriber that writes into `sink`; the usual test setup.
pub fn capture(sink: MemorySink) -> Dispatch {
    dispatch(vec![Arc::new(sink)], LevelFilter::DEBUG, LogFormat::Json)
}

/// Field values collected from a span or an event, in first-seen order, each
/// written as JSON once, when it is recorded: a record made inside a span copies
/// the span's values instead of serializing them again.
#[derive(Default)]
struct Fields {
    /// The values' JSON, one after another.
    json: Vec<u8>,
    /// Each field's name and where its latest value lies in `json`.
    entries: Vec<(&'static str, Range<usize>)>,
    /// Whether a field may be recorded again (a span's or a request's), so that a
    /// value must replace an earlier one of the same name. An event records each of
    /// its fields once, and the record is merged by name when written anyway.
    rerecorded: bool,
}

impl Fields {
    /// Fields that may be recorded again: see [`Fields::rerecorded`].
    fn with_capacity(fields: usize) -> Self {
        Self {
            json: Vec::with_capacity(fields * 24),
            entries: Vec::with_capacity(fields),
            rerecorded: true,
        }
    }

    /// An event's fields, each recorded once.
    fn for_event() -> Self {
        Self {
            rerecorded: false,
            ..Self::with_capacity(16)
        }
    }

    fn clear(&mut self) {
        self.json.clear();
        self.entries.clear();
    }

    /// Records `key` as the JSON `write` appends, replacing an earlier value.
    fn put(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.json.len();
        write(&mut self.json);
        let range = start..self.json.len();
        if !self.rerecorded {
            return self.entries.push((key, range));
        }
        match self.entries.iter_mut().find(|(k, _)| same_name(k, key)) {
            Some(slot) => {
                slot.1 = range;
                // A value recorded again leaves the old one behind; a span that
                // records many times keeps no more than twice what it holds.
                let live: usize = self.entries.iter().map(|(_, r)| r.len()).sum();
                if self.json.len() > 2 * live + 1024 {
                    self.compact();
                }
            }
            None => self.entries.push((key, range)),
        }
    }

    fn compact(&mut self) {
        let mut json = Vec::with_capacity(self.json.len() / 2);
        for (_, range) in &mut self.entries {
            let start = json.len();
            json.extend_from_slice(&self.json[range.clone()]);
            *range = start..json.len();
        }
        self.json = json;
    }

    fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.entries
            .iter()
            .map(|(key, range)| (*key, &self.json[range.clone()]))
    }

    fn text(&mut self, key: &'static str, text: &str) {
        // Checked, not parsed: a document that is not valid JSON on one line is
        // written as a string.
        if text.starts_with(['[', '{'])
            && STRUCTURED_FIELDS.contains(&key)
            && !text.contains(['\n', '\r'])
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        {
            self.put(key, |json| json.extend_from_slice(text.as_bytes()));
        } else {
            self.put(key, |out| json::push_str(out, text));
        }
    }

    /// Numbers as serde_json writes them (a float that is not finite as `null`).
    fn number(&mut self, key: &'static str, value: impl serde::Serialize) {
        self.put(key, |json| {
            let mark = json.len();
            if serde_json::to_writer(&mut *json, &value).is_err() {
                json.truncate(mark);
                json.extend_from_slice(b"null");
            }
        });
    }
}

/// Whether two field names are the same. Names are short, and most that differ
/// differ in length or first byte, which are compared before the bytes.
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field.name(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), |json| {
            json.extend_from_slice(if value { b"true" } else { b"false" })
        });
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field.name(), &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let key = field.name();
        if STRUCTURED_FIELDS.contains(&key) {
            return self.text(key, &format!("{value:?}"));
        }
        // Formatted straight into the value, escaped as it comes.
        self.put(key, |json| {
            json.push(b'"');
            let _ = write!(json::Escaping(json), "{value:?}");
            json.push(b'"');
        });
    }
}

tokio::task_local! {
    /// The fields of the request this task is handling, which lead each of its records.
    static REQUEST: RefCell<Fields>;
}

/// Runs `future` as the handling of one request: every record it writes starts with
/// `requestId` and `endpoint`, then the fields [`record_request_field`] adds.
///
/// A task-local rather than a span: a span costs a registry entry, its enter and
/// exit on every poll and a lookup per record, on a path where every request pays.
///
/// A plain function returning the scope's future, not an `async fn`: an `async fn`'s
/// state would hold `future` twice, once as its argument and once inside the scope.
pub fn in_request<F: Future>(request_id: &str, endpoint: &str, future: F) -> impl Future<Output = F::Output> {
    let mut fields = Fields::with_capacity(6);
    fields.put("requestId", |out| json::push_str(out, request_id));
    fields.put("endpoint", |out| json::push_str(out, endpoint));
    REQUEST.scope(RefCell::new(fields), future)
}

/// Adds `key` (`userId`, `cartId`, `attemptId`, `orderId`) to the records of the
/// request being handled, replacing an earlier value; outside a request, nothing.
pub fn record_request_field(key: &'static str, value: &str) {
    let _ = REQUEST.try_with(|fields| {
        if let Ok(mut fields) = fields.try_borrow_mut() {
            fields.put(key, |out| json::push_str(out, value));
        }
    });
}

/// A value of a field given to [`record`].
#[derive(Clone, Copy)]
pub enum FieldValue<'a> {
    /// Written as a JSON string.
    Text(&'a str),
    /// Written as text, formatted straight into the record.
    Display(&'a dyn std::fmt::Display),
    /// A whole number.
    Number(u64),
    /// A JSON document this crate wrote itself (see [`json`]), embedded as it is.
    Json(&'a [u8]),
}

impl FieldValue<'_> {
    /// Appends the value as JSON.
    pub(crate) fn write_json(self, out: &mut Vec<u8>) {
        match self {
            FieldValue::Text(text) => json::push_str(out, text),
            FieldValue::Display(value) => {
                out.push(b'"');
                let _ = write!(json::Escaping(out), "{value}");
                out.push(b'"');
            }
            FieldValue::Number(number) => {
                let mut digits = itoa::Buffer::new();
                out.extend_from_slice(digits.format(number).as_bytes());
            }
            FieldValue::Json(document) => {
                debug_assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(document).is_ok() && !document.contains(&b'\n'),
                    "not one line of JSON: {}",
                    String::from_utf8_lossy(document)
                );
                out.extend_from_slice(document);
            }
        }
    }
}

/// Writes one record, as `tracing` would write an event of `level` with these
/// fields and `message`, for the records every request writes (its access record,
/// and the ERROR record of a 5xx): the same line, written straight from the
/// values, without collecting them through tracing's visitors first. It carries
/// the fields of the request being handled, not those of enclosing spans (the
/// request pipeline opens none). Goes to the current subscriber, if it is this
/// module's; the caller checks that `level` is enabled (`tracing::enabled!`).
pub fn record(level: Level, message: &str, fields: &[(&'static str, Option<FieldValue<'_>>)]) {
    tracing::dispatcher::get_default(|dispatch| {
        let Some(layer) = dispatch.downcast_ref::<LogLayer>() else {
            return;
        };
        let written = REQUEST.try_with(|request| match request.try_borrow() {
            Ok(request) => layer.write_record(level, message, Some(&request), fields),
            Err(_) => layer.write_record(level, message, None, fields),
        });
        if written.is_err() {
            layer.write_record(level, message, None, fields);
        }
    });
}

/// The most enclosing spans whose fields a record carries; beyond it, the
/// outermost are left out.
const MAX_SPANS: usize = 8;
/// The room a thread keeps for its next line; a buffer that a longer record grew
/// past it is let go once that record is written.
const LINE_KEPT: usize = 4096;

thread_local! {
    /// The line being built, reused by every record this thread writes.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LINE_KEPT));
    /// An event's fields, reused likewise; taken while in use, so a record written
    /// meanwhile (by a sink that logs) gets fields of its own.
    static EVENT: Cell<Option<Fields>> = const { Cell::new(None) };
}

struct LogLayer {
    sinks: Vec<Arc<dyn LineSink>>,
    format: LogFormat,
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::with_capacity(attrs.metadata().fields().len());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let written = REQUEST.try_with(|request| match request.try_borrow() {
            Ok(request) => self.write_event(event, &ctx, Some(&request)),
            Err(_) => self.write_event(event, &ctx, None),
        });
        if written.is_err() {
            self.write_event(event, &ctx, None);
        }
    }
}

impl LogLayer {
    /// See [`record`]. In JSON the line is written in one pass: the request's
    /// fields (a field given again taking the place of the request's value), then
    /// the rest of `fields`; any other format, or more fields than one pass keeps
    /// track of, goes through the usual writer.
    fn write_record(
        &self,
        level: Level,
        message: &str,
        request: Option<&Fields>,
        fields: &[(&'static str, Option<FieldValue<'_>>)],
    ) {
        let given = || {
            fields
                .iter()
                .filter_map(|(key, value)| value.map(|value| (*key, value)))
        };
        if self.format != LogFormat::Json || fields.len() > u64::BITS as usize {
            let mut own = Fields::for_event();
            for (key, value) in given() {
                own.put(key, |out| value.write_json(out));
            }
            own.put("message", |out| json::push_str(out, message));
            return self.write_merged(level, request.into_iter(), &own);
        }
        let write = |line: &mut Vec<u8>| {
            json_line_start(line, level);
            json::push_str(line, message);
            // Which of `fields` took a request field's place, by position.
            let mut placed = 0u64;
            for (key, value) in request.into_iter().flat_map(Fields::iter) {
                if value == b"null" || is_reserved(key) {
                    continue;
                }
                push_key(line, key);
                match given().enumerate().find(|(_, (k, _))| same_name(k, key)) {
                    Some((n, (_, value))) => {
                        placed |= 1 << n;
                        value.write_json(line);
                    }
                    None => line.extend_from_slice(value),
                }
            }
            for (n, (key, value)) in given().enumerate() {
                if placed & (1 << n) == 0 && !is_reserved(key) {
                    push_key(line, key);
                    value.write_json(line);
                }
            }
            line.extend_from_slice(b"}\n");
            for sink in &self.sinks {
                sink.write_line(line);
            }
        };
        with_line(write);
    }

    /// Writes `event` with the fields of `request`, of its enclosing spans and its own,
    /// in that order; a later value of the same name wins.
    fn write_event<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, request: Option<&Fields>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut own = EVENT.take().unwrap_or_else(Fields::for_event);
        event.record(&mut own);
        self.write_line(event, ctx, request, &own);
        own.clear();
        if own.json.capacity() <= LINE_KEPT {
            EVENT.set(Some(own));
        }
    }

    fn write_line<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, request: Option<&Fields>, own: &Fields)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        // The enclosing spans, innermost first, and their fields: borrowed, not
        // copied, and held on the stack.
        let mut spans: [Option<SpanRef<'_, S>>; MAX_SPANS] = [const { None }; MAX_SPANS];
        for (slot, span) in spans.iter_mut().zip(ctx.event_scope(event).into_iter().flatten()) {
            *slot = Some(span);
        }
        let extensions = spans.each_ref().map(|span| span.as_ref().map(SpanRef::extensions));
        // Root first, so an inner span's value wins, and the event's own values win
        // over all.
        let inherited = extensions.iter().rev().flatten().filter_map(|e| e.get::<Fields>());
        self.write_merged(*event.metadata().level(), request.into_iter().chain(inherited), own);
    }

    /// Writes a record of the fields of `inherited` (those that are not null) and
    /// then of `own`, in order; a later value of a name takes the place of an
    /// earlier one.
    fn write_merged<'f>(&self, level: Level, inherited: impl Iterator<Item = &'f Fields>, own: &'f Fields) {
        let mut fields: Vec<(&'static str, &[u8])> = Vec::with_capacity(24);
        for (key, value) in inherited
            .flat_map(Fields::iter)
            .filter(|(_, v)| *v != b"null")
            .chain(own.iter())
        {
            match fields.iter_mut().find(|(k, _)| same_name(k, key)) {
                Some(slot) => slot.1 = value,
                None => fields.push((key, value)),
            }
        }
        with_line(|line| {
            match self.format {
                LogFormat::Json => json_line(line, level, &fields),
                LogFormat::Pretty => line.extend_from_slice(pretty_line(level, &fields).as_bytes()),
            }
            for sink in &self.sinks {
                sink.write_line(line);
            }
        });
    }
}

/// Runs `write` on this thread's line buffer, emptied first.
fn with_line(write: impl FnOnce(&mut Vec<u8>)) {
    LINE.with(|line| match line.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            write(&mut line);
            if line.capacity() > LINE_KEPT {
                *line = Vec::with_capacity(LINE_KEPT);
            }
        }
        // A sink that logged while writing: give its record a buffer of its own.
        Err(_) => write(&mut Vec::new()),
    });
}

thread_local! {
    /// The second of this thread's latest record and its `YYYY-MM-DDTHH:MM:SS.`:
    /// records come many to a second, and only the milliseconds differ.
    static SECOND: Cell<(i64, [u8; 20])> = const { Cell::new((i64::MIN, [0; 20])) };
}

/// Appends the record's timestamp, as [`clock::push_rfc3339_ms`] writes it.
fn push_timestamp(out: &mut Vec<u8>, unix_ms: i64) {
    let second = unix_ms.div_euclid(1000);
    let (cached, mut prefix) = SECOND.get();
    if cached != second {
        let mut text = Vec::with_capacity(24);
        clock::push_rfc3339_ms(&mut text, unix_ms);
        prefix.copy_from_slice(&text[..20]);
        SECOND.set((second, prefix));
    }
    out.extend_from_slice(&prefix);
    let ms = unix_ms.rem_euclid(1000);
    for digit in [ms / 100, ms / 10 % 10, ms % 10] {
        out.push(b'0' + u8::try_from(digit).expect("a decimal digit fits a byte"));
    }
    out.push(b'Z');
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

/// `,"service":…,"version":…` as JSON, the same in every record.
fn service_fields() -> &'static str {
    static FIELDS: OnceLock<String> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let version = serde_json::to_string(version()).unwrap_or_else(|_| "\"\"".to_string());
        format!("\",\"service\":\"{SERVICE}\",\"version\":{version}")
    })
}

/// `{"timestamp":…,"level":…,"service":…,"version":…,"message":`: every JSON
/// record's start, up to its message.
fn json_line_start(out: &mut Vec<u8>, level: Level) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    push_timestamp(out, clock::now_ms());
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(level_name(level).as_bytes());
    out.extend_from_slice(service_fields().as_bytes());
    out.extend_from_slice(b",\"message\":");
}

/// `,"key":`.
fn push_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_line(out: &mut Vec<u8>, level: Level, fields: &[(&'static str, &[u8])]) {
    json_line_start(out, level);
    match fields.iter().find(|(k, _)| same_name(k, "message")) {
        Some((_, value)) => out.extend_from_slice(value),
        None => out.extend_from_slice(b"\"\""),
    }
    for (key, value) in fields.iter().filter(|(k, _)| !is_reserved(k)) {
        push_key(out, key);
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"}\n");
}

fn pretty_line(level: Level, fields: &[(&'static str, &[u8])]) -> String {
    let mut out = String::with_capacity(200);
    let _ = write!(out, "{} {:<5} ", clock::rfc3339_ms(clock::now_ms()), level_name(level));
    if let Some((_, message)) = fields.iter().find(|(k, _)| *k == "message") {
        match serde_json::from_slice::<String>(message) {
            Ok(text) => out.push_str(&text),
            Err(_) => out.push_str(&String::from_utf8_lossy(message)),
        }
    }
    for (key, value) in fields.iter().filter(|(k, _)| *k != "message") {
        match serde_json::from_slice::<String>(value) {
            Ok(text) => {
                let _ = write!(out, " {key}={text:?}");
            }
            Err(_) => {
                let _ = write!(out, " {key}={}", String::from_utf8_lossy(value));
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_flatten_span_fields_and_embed_structured_ones() {
        let sink = MemorySink::default();
        tracing::dispatcher::with_default(&capture(sink.clone()), || {
            let span = tracing::info_span!("request", requestId = "req_1", userId = tracing::field::Empty);
            let _entered = span.enter();
            span.record("userId", "usr_456");
            tracing::error!(errorChain = r#"["outer","inner"]"#, status = 500_u64, "checkout failed");
        });
        let records = sink.records();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record["level"], "ERROR");
        assert_eq!(record["service"], SERVICE);
        assert_eq!(record["message"], "checkout failed");
        assert_eq!(record["requestId"], "req_1");
        assert_eq!(record["userId"], "usr_456");
        assert_eq!(record["status"], 500);
        assert_eq!(record["errorChain"], serde_json::json!(["outer", "inner"]));
        let timestamp = record["timestamp"].as_str().expect("timestamp is a string");
        assert!(clock::parse_rfc3339_ms(timestamp).is_some(), "{timestamp}");
        assert!(timestamp.ends_with('Z') && timestamp.len() == 24, "{timestamp}");
    }

    #[tokio::test]
    async fn a_record_written_directly_is_the_line_tracing_writes_for_the_same_fields() {
        use tracing::instrument::WithSubscriber as _;
        let url: axum::http::Uri = "/api/carts/cart_1?x=%22y%22&z={a}".parse().expect("a URI");
        for format in [LogFormat::Json, LogFormat::Pretty] {
            let sink = MemorySink::default();
            let handled = async {
                record_request_field("userId", "usr_1");
                record_request_field("cartId", "cart_of_the_request");
                let (status, duration, error): (u64, u64, Option<&str>) = (503, 7, None);
                let chain = br#"["outer \"x\"","inner"]"#;
                tracing::error!(
                    event = "error",
                    cartId = "cart_of_the_record",
                    errorChain = std::str::from_utf8(chain).expect("UTF-8"),
                    status,
                    error,
                    url = %url,
                    durationMs = duration,
                    message = "it \"failed\"\n",
                );
                record(
                    Level::ERROR,
                    "it \"failed\"\n",
                    &[
                        ("event", Some(FieldValue::Text("error"))),
                        ("cartId", Some(FieldValue::Text("cart_of_the_record"))),
                        ("errorChain", Some(FieldValue::Json(chain))),
                        ("status", Some(FieldValue::Number(status))),
                        ("error", error.map(FieldValue::Text)),
                        ("url", Some(FieldValue::Display(&url))),
                        ("durationMs", Some(FieldValue::Number(duration))),
                    ],
                );
            };
            in_request("req_1", "GET /api/carts/{cartId}", handled)
                .with_subscriber(dispatch(vec![Arc::new(sink.clone())], LevelFilter::DEBUG, format))
                .await;
            let lines = sink.lines();
            assert_eq!(lines.len(), 2, "{lines:?}");
            // Past the timestamp, which may differ by a millisecond.
            let skip = if format == LogFormat::Json { 38 } else { 24 };
            assert_eq!(lines[0][skip..], lines[1][skip..], "{format:?}");
            assert!(lines[1].contains("cart_of_the_record"), "{}", lines[1]);
            assert!(!lines[1].contains("cart_of_the_request"), "{}", lines[1]);
        }
    }

    #[tokio::test]
    async fn a_record_of_more_fields_than_one_pass_tracks_names_each_field_once() {
        use tracing::instrument::WithSubscriber as _;
        let sink = MemorySink::default();
        let names: Vec<&'static str> = (0..70).map(|n| &*format!("field{n}").leak()).collect();
        let handled = async {
            record_request_field("cartId", "cart_of_the_request");
            let mut fields: Vec<_> = names.iter().map(|name| (*name, Some(FieldValue::Number(1)))).collect();
            fields.push(("cartId", Some(FieldValue::Text("cart_of_the_record"))));
            record(Level::INFO, "many", &fields);
        };
        in_request("req_1", "GET /", handled)
            .with_subscriber(capture(sink.clone()))
            .await;
        let lines = sink.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].matches("\"cartId\"").count(), 1, "{}", lines[0]);
        let record = &sink.records()[0];
        assert_eq!(record["cartId"], "cart_of_the_record");
        assert_eq!(record["field69"], 1);
    }

    #[test]
    fn a_request_scope_holds_its_future_once() {
        let handled = std::future::ready([7u8; 4096]);
        let scoped = in_request("req_1", "GET /", handled);
        // Its own fields and the task-local's bookkeeping, not a second copy.
        assert!(
            std::mem::size_of_val(&scoped) < 4096 + 512,
            "{} bytes",
            std::mem::size_of_val(&scoped)
        );
    }

    #[tokio::test]
    async fn records_of_a_request_lead_with_its_fields_and_the_latest_value_wins() {
        use tracing::instrument::WithSubscriber as _;
        let sink = MemorySink::default();
        let handled = async {
            record_request_field("userId", "usr_1");
            tracing::info!(status = 201_u64, "first");
            record_request_field("orderId", "ord_1");
            record_request_field("orderId", "ord_\"2\"");
            record_request_field("cartId", "cart_of_the_request");
            tracing::warn!(attemptId = "att_1", cartId = "cart_of_the_record", "second");
        };
        in_request("req_1", "POST /api/checkout/complete", handled)
            .with_subscriber(capture(sink.clone()))
            .await;
        async { tracing::info!("outside") }
            .with_subscriber(capture(sink.clone()))
            .await;
        record_request_field("userId", "usr_ignored");

        let lines = sink.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let records = sink.records();
        assert_eq!(records[0]["requestId"], "req_1");
        assert_eq!(records[0]["endpoint"], "POST /api/checkout/complete");
        assert_eq!(records[0]["userId"], "usr_1");
        assert_eq!(records[0].get("orderId"), None);
        assert_eq!(records[1]["orderId"], "ord_\"2\"");
        assert_eq!(records[1]["attemptId"], "att_1");
        // A field both carry is written once, with the record's value.
        assert_eq!(records[1]["cartId"], "cart_of_the_record");
        assert_eq!(lines[1].matches("\"cartId\":").count(), 1, "{}", lines[1]);
        // The request's fields come first, in the order they were recorded, then the
        // record's own.
        let at = |line: &str, key: &str| line.find(&format!("\"{key}\":")).expect(key);
        let second = &lines[1];
        assert!(at(second, "requestId") < at(second, "endpoint"), "{second}");
        assert!(at(second, "endpoint") < at(second, "userId"), "{second}");
        assert!(at(second, "userId") < at(second, "orderId"), "{second}");
        assert!(at(second, "orderId") < at(second, "attemptId"), "{second}");
        assert_eq!(records[2]["message"], "outside");
        assert_eq!(records[2].get("requestId"), None);
        assert_eq!(records[2].get("userId"), None);
        // Each thread reuses its event buffers: nothing of a record is left for the next.
        assert_eq!(records[2].get("attemptId"), None);
        assert_eq!(records[2].get("status"), None);
    }

    #[test]
    fn cached_seconds_give_the_same_timestamps_as_the_clock() {
        let start = 1_732_845_599_990_i64;
        for unix_ms in (start..start + 2_030).chain([0, 86_399_999, 253_402_300_799_999]) {
            let (mut cached, mut fresh) = (Vec::new(), Vec::new());
            push_timestamp(&mut cached, unix_ms);
            clock::push_rfc3339_ms(&mut fresh, unix_ms);
            assert_eq!(cached, fresh, "{unix_ms}");
        }
    }

    #[test]
    fn formatted_values_are_escaped_and_odd_numbers_written_as_null() {
        let sink = MemorySink::default();
        tracing::dispatcher::with_default(&capture(sink.clone()), || {
            let path = "C:\\tmp\n\"x\"";
            tracing::warn!(ratio = f64::NAN, ok = true, count = -3_i64, "moved {path:?}\tdone");
        });
        let lines = sink.lines();
        assert_eq!(lines.len(), 1);
        let record: Value = serde_json::from_str(&lines[0]).expect("a record is one JSON line");
        assert_eq!(record["message"], "moved \"C:\\\\tmp\\n\\\"x\\\"\"\tdone");
        assert_eq!(record["ratio"], Value::Null);
        assert_eq!(record["ok"], true);
        assert_eq!(record["count"], -3);
    }

    #[test]
    fn a_field_recorded_again_keeps_its_latest_value_in_bounded_space() {
        let mut fields = Fields::with_capacity(2);
        fields.text("requestId", "req_1");
        for n in 0..10_000 {
            fields.text("orderId", &format!("ord_{n:0>40}"));
        }
        let values: Vec<(&str, String)> = fields
            .iter()
            .map(|(key, json)| (key, String::from_utf8_lossy(json).into_owned()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("requestId", "\"req_1\"".to_string()),
                ("orderId", format!("\"ord_{:0>40}\"", 9_999))
            ]
        );
        assert!(
            fields.json.len() < 2 * 60 + 1024 + 60,
            "{} bytes kept",
            fields.json.len()
        );
    }

    #[test]
    fn pretty_lines_show_the_message_then_each_field() {
        let message = br#""card declined""#;
        let line = pretty_line(
            Level::WARN,
            &[
                ("message", message),
                ("userId", br#""usr_456""#),
                ("status", b"402"),
                ("errorChain", br#"["a","b"]"#),
            ],
        );
        let (_, rest) = line.split_once(' ').expect("a timestamp first");
        assert_eq!(
            rest,
            "WARN  card declined userId=\"usr_456\" status=402 errorChain=[\"a\",\"b\"]\n"
        );
    }

    /// An output that keeps what is written to it.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("test lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_wakes_the_writer_once_per_full_buffer_and_loses_no_line() {
        let written = Written::default();
        let (sink, guard) = batch_sink(written.clone(), "test-log").expect("thread");
        let line = [b'x'; 99];
        let lines = 4 * FLUSH_AT / 100;
        for _ in 0..lines {
            sink.write_line(&line);
            sink.write_line(b"\n");
        }
        // Each wake needs the buffer to fill from below the mark, and it empties
        // only when the writer takes it.
        let wakes = sink.0.wakes.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=4).contains(&wakes), "{wakes} wakes for four buffers' worth");
        drop(guard);
        assert_eq!(written.0.lock().expect("test lock").len(), lines * 100);
    }

    #[test]
    fn batched_lines_are_all_written_in_order_and_flushed_on_drop() {
        let written = Written::default();
        let (sink, guard) = batch_sink(written.clone(), "test-log").expect("thread");
        let lines = 20_000;
        for n in 0..lines {
            sink.write_line(format!("line {n}\n").as_bytes());
        }
        drop(guard);
        let text = String::from_utf8(written.0.lock().expect("test lock").clone()).expect("utf8");
        let numbers: Vec<usize> = text.lines().map(|l| l[5..].parse().expect("number")).collect();
        assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
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
}
