//! The `LOG_*` settings, read on their own so that problems with the rest of the
//! configuration can still be logged.

use std::path::PathBuf;

use tracing_subscriber::filter::LevelFilter;

use super::reader::Reader;
use super::{Problem, Source};
use crate::telemetry::{LogConfig, LogFormat};

/// Reads the logging settings alone, falling back to defaults for bad values, so that
/// problems with the rest of the configuration can still be logged.
pub fn log_config(source: &Source) -> (LogConfig, Vec<Problem>) {
    let mut reader = Reader {
        source,
        problems: Vec::new(),
    };
    let defaults = LogConfig::default();
    let level = match reader.optional("LOG_LEVEL").map(|l| l.trim().to_ascii_lowercase()) {
        None => defaults.level,
        Some(level) => match level.as_str() {
            "trace" => LevelFilter::TRACE,
            "debug" => LevelFilter::DEBUG,
            "info" => LevelFilter::INFO,
            "warn" => LevelFilter::WARN,
            "error" => LevelFilter::ERROR,
            _ => {
                reader.problems.push(Problem(format!(
                    "Environment variable 'LOG_LEVEL' must be one of trace, debug, info, warn, error, got '{level}'."
                )));
                defaults.level
            }
        },
    };
    let format = match reader.optional("LOG_FORMAT").map(|f| f.trim().to_ascii_lowercase()) {
        None => defaults.format,
        Some(format) => match format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => {
                reader.problems.push(Problem(format!(
                    "Environment variable 'LOG_FORMAT' must be json or pretty, got '{format}'."
                )));
                defaults.format
            }
        },
    };
    let dir = reader.optional("LOG_DIR").map(PathBuf::from);
    if let Some(dir) = &dir
        && let Err(problem) = check_log_dir(dir)
    {
        reader.problems.push(problem);
    }
    let max_files = reader.number("LOG_MAX_FILES", defaults.max_files, 1..=10_000);
    let max_file_bytes = reader.number("LOG_MAX_FILE_BYTES", defaults.max_file_bytes, 4096..=u64::MAX);
    let config = LogConfig {
        level,
        format,
        dir,
        max_files,
        max_file_bytes,
        stdout: true,
    };
    (config, reader.problems)
}

fn check_log_dir(dir: &std::path::Path) -> Result<(), Problem> {
    let problem = |why: String| {
        Problem(format!(
            "Environment variable 'LOG_DIR' names '{}', which {why}.",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| problem(format!("cannot be created ({e})")))?;
    let probe = dir.join(".checkout-write-test");
    std::fs::write(&probe, b"").map_err(|e| problem(format!("is not writable ({e})")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
