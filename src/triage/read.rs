//! Reading log records as a stream: files (plain or gzip, detected by their first
//! bytes) or standard input, one JSON object per line, parsed into borrowed fields so
//! a million lines cost no more memory than one.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;

/// The fields of a record triage looks at; everything else is skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Record<'a> {
    /// RFC 3339 time.
    #[serde(borrow)]
    pub timestamp: Option<Cow<'a, str>>,
    /// `ERROR`, `WARN`, ...
    #[serde(borrow)]
    pub level: Option<Cow<'a, str>>,
    /// The build that wrote the record.
    #[serde(borrow)]
    pub version: Option<Cow<'a, str>>,
    /// Human text.
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
    /// Kind of record.
    #[serde(borrow)]
    pub event: Option<Cow<'a, str>>,
    /// The request it belongs to.
    #[serde(borrow)]
    pub request_id: Option<Cow<'a, str>>,
    /// Method and route template.
    #[serde(borrow)]
    pub endpoint: Option<Cow<'a, str>>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Error ID of a 5xx.
    #[serde(borrow)]
    pub error_id: Option<Cow<'a, str>>,
    /// Error class of a 5xx.
    #[serde(borrow)]
    pub error_class: Option<Cow<'a, str>>,
    /// The cause of a 5xx and every cause beneath it.
    #[serde(borrow)]
    pub error_chain: Option<Vec<Cow<'a, str>>>,
    /// What a 503 blamed, or the breaker's dependency.
    #[serde(borrow)]
    pub dependency: Option<Cow<'a, str>>,
    /// Schema version at startup.
    pub schema_version: Option<i64>,
    /// Breaker transition: from state.
    #[serde(borrow)]
    pub from: Option<Cow<'a, str>>,
    /// Breaker transition: to state.
    #[serde(borrow)]
    pub to: Option<Cow<'a, str>>,
    /// Alert name.
    #[serde(borrow)]
    pub alert_name: Option<Cow<'a, str>>,
    /// Alert state (`firing`, `resolved`).
    #[serde(borrow)]
    pub state: Option<Cow<'a, str>>,
    /// Alert severity.
    #[serde(borrow)]
    pub severity: Option<Cow<'a, str>>,
    /// `resources`: the database pool.
    pub pool: Option<PoolFields>,
    /// `resources`: memory.
    pub memory: Option<MemoryFields>,
    /// `resources`: the fullest of the filesystems watched.
    pub disk: Option<DiskFields>,
    /// `resources`: file descriptors.
    pub fds: Option<FdFields>,
}

/// Pool figures of a `resources` record.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolFields {
    /// Connections in use.
    pub active: u64,
    /// Connections open and free.
    pub idle: u64,
    /// The pool's maximum.
    pub max: u64,
    /// Callers waiting for a connection.
    pub pending: u64,
    /// Waits that timed out since the process started.
    pub acquire_timeouts: u64,
}

/// Memory figures of a `resources` record.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemoryFields {
    /// Used over the limit.
    pub usage_ratio: f64,
    /// The limit.
    pub limit_bytes: u64,
    /// `cgroup` or `system`.
    pub source: String,
}

/// Disk figures of a `resources` record.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskFields {
    /// Used share.
    pub usage_ratio: f64,
    /// The path measured.
    pub path: String,
}

/// Descriptor figures of a `resources` record.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(default)]
pub struct FdFields {
    /// Open.
    pub open: u64,
    /// Limit.
    pub max: u64,
}

/// Opens a log source: `-` is standard input; gzip is recognised by its magic bytes.
pub fn open(source: &str) -> io::Result<Box<dyn BufRead>> {
    const CAPACITY: usize = 1 << 20;
    let raw: Box<dyn Read> = if source == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(Path::new(source))?)
    };
    let mut buffered = BufReader::with_capacity(CAPACITY, raw);
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(
            CAPACITY,
            flate2::bufread::MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    })
}

/// Calls `each` with every line of `input` that parses as a record (other lines, such
/// as a pretty-printed log or a stack trace, are counted and skipped).
pub fn for_each_record(mut input: impl BufRead, mut each: impl FnMut(&Record<'_>, &str)) -> io::Result<u64> {
    let mut line = String::with_capacity(1024);
    let mut skipped = 0;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(skipped);
        }
        let text = line.trim_end();
        if !text.starts_with('{') {
            skipped += u64::from(!text.is_empty());
            continue;
        }
        match serde_json::from_str::<Record<'_>>(text) {
            Ok(record) => each(&record, text),
            Err(_) => skipped += 1,
        }
    }
}

/// The timestamp of a line without parsing the rest, for the records this service
/// writes (which start with it).
pub fn quick_timestamp(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("{\"timestamp\":\"")?;
    rest.get(..24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn records_are_read_from_plain_and_gzip_input_and_junk_is_skipped() {
        let text = "{\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"level\":\"ERROR\",\"message\":\"a \\\"quoted\\\" word\",\"status\":503,\"pool\":{\"active\":3,\"max\":3}}\nnot json\n{broken\n\n";
        let mut seen = Vec::new();
        let skipped = for_each_record(text.as_bytes(), |record, _| {
            seen.push((
                record.message.as_deref().map(str::to_string),
                record.status,
                record.pool,
            ));
        })
        .expect("read");
        assert_eq!(skipped, 2);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0.as_deref(), Some("a \"quoted\" word"));
        assert_eq!(seen[0].2.map(|p| (p.active, p.max)), Some((3, 3)));

        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(text.as_bytes()).expect("compress");
        let path = std::env::temp_dir().join(format!("triage-read-{}.log.gz", std::process::id()));
        std::fs::write(&path, gzip.finish().expect("finish")).expect("write");
        let mut count = 0;
        for_each_record(open(path.to_str().expect("path")).expect("open"), |_, _| count += 1).expect("read");
        assert_eq!(count, 1);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_timestamp_is_read_from_the_start_of_a_line() {
        assert_eq!(
            quick_timestamp("{\"timestamp\":\"2026-11-25T02:36:44.151Z\",\"level\":\"INFO\"}"),
            Some("2026-11-25T02:36:44.151Z")
        );
        assert_eq!(quick_timestamp("{\"level\":\"INFO\"}"), None);
    }
}
