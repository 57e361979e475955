//! Structured logs on `tracing` and `tracing-subscriber`: one JSON object per line
//! ([`record`]) or a readable line with `LOG_FORMAT=pretty`, on stdout and, with
//! `LOG_DIR`, in files rotated daily and at `LOG_MAX_FILE_BYTES`.
//!
//! Every record carries `timestamp`, `level`, `service`, `version` and `message`,
//! then the fields of the spans it was written in (a request's span holds
//! `requestId`, `endpoint`, `traceId`, `userId`, `cartId`, ...), then its own.
//! Writing never blocks the writer: each output has a bounded queue drained by a
//! thread of its own ([`sink`]); when an output falls behind, records are dropped,
//! counted by level ([`dropped_records`]), ERROR records last, and one WARN record
//! says how many once the output has caught up.
//!
//! The subscriber is built by plain functions that take their outputs, so tests
//! capture logs in memory ([`capture`]) and each in-process app logs to its own
//! [`Dispatch`].

mod record;
mod sink;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

pub use sink::{DroppedRecords, MemorySink, dropped_records};

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

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default, and what `checkout triage` reads).
    Json,
    /// tracing-subscriber's readable lines, for people reading a terminal.
    Pretty,
}

/// Where log lines go and at what level.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Most verbose level of this service's own records (dependencies log at WARN).
    pub level: LevelFilter,
    /// Line format.
    pub format: LogFormat,
    /// With a directory, records are also written to `checkout.log` there.
    pub dir: Option<PathBuf>,
    /// How many files to keep, the current one included.
    pub max_files: usize,
    /// A file this large is rotated before the day is over.
    pub max_file_bytes: u64,
    /// Whether records also go to stdout.
    pub stdout: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LevelFilter::INFO,
            format: LogFormat::Json,
            dir: None,
            max_files: 7,
            max_file_bytes: 100 * 1024 * 1024,
            stdout: true,
        }
    }
}

/// The name of the current log file in `LOG_DIR`; rotated files add `.1`, `.2`, ...
pub const LOG_FILE_NAME: &str = "checkout.log";

/// A running log pipeline. Dropping it writes what is queued (waiting a bounded time).
pub struct Telemetry {
    /// The subscriber that writes this pipeline's records.
    pub dispatch: Dispatch,
    outputs: sink::Outputs,
    reporter: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    export: Option<trace::Export>,
}

impl Telemetry {
    /// Sends the spans still queued for export (waiting a bounded time).
    pub async fn finish_export(&mut self) {
        if let Some(export) = self.export.take() {
            export.shutdown().await;
        }
    }

    /// Waits (at most a second) until every record logged so far has been written,
    /// so that what the caller prints next appears after them.
    pub fn flush(&self) {
        self.outputs.wait_until_written(Duration::from_secs(1));
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.reporter.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        self.flush();
    }
}

/// Builds the pipeline for a process: stdout, plus rotated files when `config.dir`
/// is set, plus the export of spans with `otel` (started on the current tokio
/// runtime).
pub fn init(config: &LogConfig, otel: Option<&trace::OtelSettings>) -> std::io::Result<Telemetry> {
    let mut outputs = Vec::new();
    if config.stdout {
        // Buffered: the output's thread writes each batch it takes from the queue
        // with one system call, not one per record.
        outputs.push(sink::Bounded::new(
            "checkout-log-stdout",
            std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        ));
    }
    if let Some(dir) = &config.dir {
        std::fs::create_dir_all(dir)?;
        outputs.push(sink::Bounded::new(
            "checkout-log-file",
            sink::rotating_file(dir, config.max_files, config.max_file_bytes)?,
        ));
    }
    let outputs = sink::Outputs::new(outputs);
    let (export, layer) = match otel.map(trace::export) {
        Some(Ok((export, layer))) => (Some(export), Some(layer)),
        Some(Err(error)) => {
            // The endpoint was validated; what fails here is local (a TLS setup).
            eprintln!("spans will not be exported: {error:#}");
            (None, None)
        }
        None => (None, None),
    };
    let dispatch = dispatch_with(outputs.clone(), config.level, config.format, layer);
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = sink::report_drops(outputs.clone(), dispatch.clone(), stop.clone())?;
    Ok(Telemetry {
        dispatch,
        outputs,
        reporter: Some((stop, reporter)),
        export,
    })
}

/// A layer under the rest, fed every span (the export of traces).
pub type SpanLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// A subscriber writing this service's records at `level` (dependencies at WARN) to
/// `writer`, one line per record.
pub fn dispatch<W>(writer: W, level: LevelFilter, format: LogFormat) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    dispatch_with(writer, level, format, None)
}

fn dispatch_with<W>(writer: W, level: LevelFilter, format: LogFormat, spans: Option<SpanLayer>) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = Targets::new()
        .with_target("checkout_service", level)
        .with_target("checkout", level)
        .with_default(LevelFilter::WARN.min(level));
    let registry = tracing_subscriber::registry().with(spans).with(filter);
    match format {
        LogFormat::Json => Dispatch::new(
            registry.with(record::SpanFields).with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(record::NoFields)
                    .event_format(record::JsonRecord)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Pretty => Dispatch::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(writer),
            ),
        ),
    }
}

/// A subscriber that writes JSON records into `sink`, at DEBUG: the usual test setup.
pub fn capture(sink: MemorySink) -> Dispatch {
    dispatch(sink, LevelFilter::DEBUG, LogFormat::Json)
}

/// The span of one request: every record written while handling it carries these
/// fields. `userId`, `cartId`, `attemptId` and `orderId` are recorded on it as they
/// become known (`Span::current().record("cartId", ...)`).
///
/// An ERROR-level span, so that it is enabled at every `LOG_LEVEL`: the WARN and
/// ERROR records of a request must carry its fields even when INFO is off.
pub fn request_span(request_id: &str, endpoint: &str) -> tracing::Span {
    tracing::error_span!(
        "request",
        requestId = request_id,
        endpoint = endpoint,
        traceId = tracing::field::Empty,
        spanId = tracing::field::Empty,
        otel.name = endpoint,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = tracing::field::Empty,
        http.route = tracing::field::Empty,
        url.path = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        userId = tracing::field::Empty,
        cartId = tracing::field::Empty,
        attemptId = tracing::field::Empty,
        orderId = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests;
