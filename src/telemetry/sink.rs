//! Where records go, without ever making the code that logs wait.
//!
//! Each output (stdout, the log file) is a [`Bounded`] queue in front of
//! tracing-appender's non-blocking writer, whose thread does the writing. The queue
//! holds at most [`QUEUE_RECORDS`] records; past nine tenths of that, records below
//! ERROR are dropped, and ERROR records take the last tenth, so they are the last
//! to go. Every drop is counted by level ([`dropped_records`]); once every output
//! has caught up, one WARN `log_records_dropped` record says how many went missing
//! ([`report_drops`]).
//!
//! Files rotate daily and at `LOG_MAX_FILE_BYTES` through `rolling-file`.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{Dispatch, Level, Metadata};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

/// Most records waiting for one output: tens of thousands, a few megabytes.
pub(crate) const QUEUE_RECORDS: usize = 20_000;

/// How often the reporter looks for drops to report.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// The levels, in the order [`DroppedRecords`] counts them.
const LEVELS: [Level; 5] = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE];

fn level_index(level: Level) -> usize {
    LEVELS.iter().position(|l| *l == level).unwrap_or(2)
}

/// Records dropped since the process started, by level: what
/// `log_records_dropped_total{level}` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedRecords(pub [u64; 5]);

impl DroppedRecords {
    /// `(level, count)` for every level, ERROR first, in lower case as the metric's
    /// label has them.
    pub fn by_level(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ["error", "warn", "info", "debug", "trace"].into_iter().zip(self.0)
    }

    /// All levels together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

static DROPPED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The records this process's outputs have dropped so far.
pub fn dropped_records() -> DroppedRecords {
    DroppedRecords(std::array::from_fn(|i| DROPPED[i].load(Ordering::Relaxed)))
}

/// How many records one output holds that are not written yet.
#[derive(Default)]
struct Queued(AtomicUsize);

/// The output's writer, as its thread sees it: each record is written with one
/// `write_all` (tracing-appender's worker makes one per record, and flushes after
/// each batch it takes); a record counts as no longer queued once flushed.
struct Counted<W> {
    inner: W,
    queued: Arc<Queued>,
    unflushed: usize,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner.write(bytes)
    }

    fn write_all(&mut self, record: &[u8]) -> io::Result<()> {
        self.unflushed += 1;
        let written = self.inner.write_all(record);
        if written.is_err() {
            self.settle();
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = self.inner.flush();
        self.settle();
        flushed
    }
}

impl<W> Counted<W> {
    /// The records written so far are out of the queue, written or lost.
    fn settle(&mut self) {
        self.queued
            .0
            .fetch_sub(std::mem::take(&mut self.unflushed), Ordering::AcqRel);
    }
}

/// One output behind a bounded queue and a thread of its own.
pub(crate) struct Bounded {
    sender: NonBlocking,
    queued: Arc<Queued>,
    _worker: WorkerGuard,
}

impl Bounded {
    /// Writes to `writer` from a thread named `name`.
    pub(crate) fn new<W: Write + Send + 'static>(name: &str, writer: W) -> Self {
        let queued = Arc::new(Queued::default());
        let (sender, worker) = NonBlockingBuilder::default()
            // The queue here is the bound; the channel only needs to hold as much.
            .buffered_lines_limit(QUEUE_RECORDS + 1)
            .lossy(true)
            .thread_name(name)
            .finish(Counted {
                inner: writer,
                queued: queued.clone(),
                unflushed: 0,
            });
        Self {
            sender,
            queued,
            _worker: worker,
        }
    }

    /// Queues `record` unless the queue is too full for its level; returns whether
    /// it was queued.
    fn offer(&self, level: Level, record: &[u8]) -> bool {
        let room = if level == Level::ERROR {
            QUEUE_RECORDS
        } else {
            QUEUE_RECORDS - QUEUE_RECORDS / 10
        };
        if self.queued.0.fetch_add(1, Ordering::AcqRel) >= room {
            self.queued.0.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        // The non-blocking writer only hands the record to its channel.
        let _ = self.sender.clone().write_all(record);
        true
    }

    fn queued(&self) -> usize {
        self.queued.0.load(Ordering::Acquire)
    }
}

/// Every output of a pipeline: what the `fmt` layer writes records to.
#[derive(Clone)]
pub(crate) struct Outputs(Arc<Vec<Bounded>>);

impl Outputs {
    pub(crate) fn new(outputs: Vec<Bounded>) -> Self {
        Self(Arc::new(outputs))
    }

    /// Whether every output has at most `records` waiting.
    fn drained_to(&self, records: usize) -> bool {
        self.0.iter().all(|output| output.queued() <= records)
    }

    /// Waits until every queued record is written, or `limit` has passed.
    pub(crate) fn wait_until_written(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.drained_to(0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Writes one record to every output, counting it dropped if any output dropped it.
pub(crate) struct RecordWriter<'a> {
    outputs: &'a Outputs,
    level: Level,
}

impl Write for RecordWriter<'_> {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        let mut dropped = false;
        for output in self.outputs.0.iter() {
            dropped |= !output.offer(self.level, record);
        }
        if dropped {
            DROPPED[level_index(self.level)].fetch_add(1, Ordering::Relaxed);
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = RecordWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RecordWriter {
            outputs: self,
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RecordWriter {
            outputs: self,
            level: *meta.level(),
        }
    }
}

/// `checkout.log` in `dir`, rotated daily and at `max_bytes`, keeping `max_files`
/// files in all.
pub(crate) fn rotating_file(
    dir: &Path,
    max_files: usize,
    max_bytes: u64,
) -> io::Result<rolling_file::BasicRollingFileAppender> {
    rolling_file::BasicRollingFileAppender::new(
        dir.join(super::LOG_FILE_NAME),
        rolling_file::RollingConditionBasic::new().daily().max_size(max_bytes),
        // The rotated files beside the current one.
        max_files.saturating_sub(1),
    )
}

/// Starts the thread that writes one WARN `log_records_dropped` record after each
/// spell of drops, once every output has caught up (half its queue free), until
/// `stop` turns true.
pub(crate) fn report_drops(outputs: Outputs, dispatch: Dispatch, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("checkout-log-drops".into())
        .spawn(move || {
            let mut reported = dropped_records();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(REPORT_EVERY);
                let now = dropped_records();
                if now == reported || !outputs.drained_to(QUEUE_RECORDS / 2) {
                    continue;
                }
                let since = DroppedRecords(std::array::from_fn(|i| now.0[i] - reported.0[i]));
                let counts: serde_json::Map<String, serde_json::Value> = since
                    .by_level()
                    .filter(|(_, count)| *count > 0)
                    .map(|(level, count)| (level.to_string(), count.into()))
                    .collect();
                tracing::dispatcher::with_default(&dispatch, || {
                    tracing::warn!(
                        event = "log_records_dropped",
                        count = since.total(),
                        dropped = serde_json::Value::Object(counts).to_string(),
                        "{} log records were dropped because a log output could not keep up",
                        since.total()
                    );
                });
                reported = now;
            }
        })
}

/// Keeps records in memory: for tests, and anywhere records must be inspected.
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<String>>>);

impl MemorySink {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|lines| lines.clone()).unwrap_or_default()
    }

    /// Every line written so far, parsed as JSON (lines that are not JSON are skipped).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Write for MemorySink {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend(String::from_utf8_lossy(record).lines().map(str::to_string));
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for MemorySink {
    type Writer = MemorySink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
