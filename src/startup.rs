//! Startup validation, run by `serve` before it binds its port and by `check`: the
//! configuration, then `SELECT 1` within `DB_ACQUIRE_TIMEOUT_MS`, then the schema
//! version. Every failure found is reported, each as one `STARTUP_FAILURE:` line on
//! stderr and one `startup_failure` log record.

use crate::config::{self, Problem, Settings, Source};
use crate::store::migrations::expected_version;
use crate::store::{Store, StoreError};

/// What validation established.
pub struct Validated {
    /// The configuration.
    pub settings: Settings,
    /// The database's schema version (after migrating, with `MIGRATE_ON_START`).
    pub schema_version: i64,
}

/// Validates `source` and the database it names. `file_problems` are problems
/// already found reading the configuration file.
pub async fn validate(source: &Source, file_problems: Vec<Problem>) -> Result<Validated, Vec<Problem>> {
    let mut problems = file_problems;
    let settings = Settings::from_source(source)
        .map_err(|found| problems.extend(found))
        .ok();
    // The database is checked whenever its own settings are usable, so that one run
    // reports a bad database alongside a missing API key.
    let db = match &settings {
        Some(settings) => Some(settings.db.clone()),
        None => config::database_settings(source).ok(),
    };
    let mut schema_version = None;
    if let Some(db) = db {
        match Store::connect_lazy(&db) {
            Err(error) => problems.push(Problem(format!("Cannot open the database: {error}."))),
            Ok(store) => {
                match check_database(&store, &db, settings.as_ref().is_some_and(|s| s.migrate_on_start)).await {
                    Ok(version) => schema_version = Some(version),
                    Err(problem) => problems.push(problem),
                }
                store.close().await;
            }
        }
    }
    match (settings, schema_version) {
        (Some(settings), Some(schema_version)) if problems.is_empty() => Ok(Validated {
            settings,
            schema_version,
        }),
        _ => Err(problems),
    }
}

async fn check_database(store: &Store, db: &config::DbSettings, migrate: bool) -> Result<i64, Problem> {
    let timeout = db.acquire_timeout;
    store.check_connection(timeout).await.map_err(|error| match error {
        StoreError::TimedOut(_) => Problem(format!(
            "The database at {} did not answer SELECT 1 within {}ms.",
            db.url.redacted(),
            timeout.as_millis()
        )),
        other => {
            let mut cause = cause_of(&other);
            if let config::DatabaseUrl::Sqlite { path } = &db.url
                && let Some(why) = unwritable_directory(path)
            {
                cause.push_str("; ");
                cause.push_str(&why);
            }
            Problem(format!("Cannot use the database at {}: {cause}.", db.url.redacted()))
        }
    })?;
    let status = store.schema_status().await.map_err(|error| {
        Problem(format!(
            "Cannot read the database schema version: {}.",
            cause_of(&error)
        ))
    })?;
    let expected = expected_version();
    if status.dirty {
        return Err(Problem(format!(
            "a migration after version {} failed part-way; repair the database before starting",
            status.version
        )));
    }
    if status.version < expected {
        if migrate {
            let version = store
                .migrate()
                .await
                .map_err(|error| Problem(format!("MIGRATE_ON_START failed: {error:#}")))?;
            tracing::info!(
                event = "migrated",
                schemaVersion = version,
                "applied pending migrations at startup"
            );
            return Ok(version);
        }
        return Err(Problem(format!(
            "database schema is at version {} but this build needs {expected}; run 'checkout migrate'",
            status.version
        )));
    }
    if status.version > expected {
        return Err(Problem(format!(
            "database schema is at version {} but this build needs {expected}; this build is older than the database, so deploy a matching build",
            status.version
        )));
    }
    Ok(status.version)
}

/// Why SQLite cannot write beside the file at `path`, if it cannot: it needs the
/// directory for its journal, and says only that it could not open the file.
fn unwritable_directory(path: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    let c_path = std::ffi::CString::new(directory.as_os_str().as_bytes()).ok()?;
    // SAFETY: c_path is a valid NUL-terminated string; access only reads it.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return None;
    }
    let error = std::io::Error::last_os_error();
    Some(format!("{} cannot be written to: {error}", directory.display()))
}

/// The driver's own words under `error`, or the error itself when it has no cause.
fn cause_of(error: &StoreError) -> String {
    match std::error::Error::source(error) {
        Some(cause) => cause.to_string(),
        None => error.to_string(),
    }
}

/// Prints each problem as a `STARTUP_FAILURE:` line on stderr and logs it.
pub fn report(problems: &[Problem]) {
    for problem in problems {
        eprintln!("STARTUP_FAILURE: {problem}");
        tracing::error!(event = "startup_failure", "STARTUP_FAILURE: {problem}");
    }
}
