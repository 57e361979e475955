//! `DATABASE_URL` and the `DB_*` bounds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::reader::Reader;
use super::{Problem, Source};

/// Where the data lives.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// An SQLite file (created if missing).
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
    /// A PostgreSQL server; the URL may carry a password, so it is kept secret.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH` or `postgres://...` / `postgresql://...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("sqlite://").or_else(|| text.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("an sqlite:// URL needs a file path, as in sqlite://./checkout.db".into());
            }
            return Ok(DatabaseUrl::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Url::parse(text).map_err(|e| format!("it is not a valid URL ({e})"))?;
            return Ok(DatabaseUrl::Postgres(SecretString::from(text.to_string())));
        }
        Err("it must start with sqlite:// or postgres://".into())
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite { path } => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(secret) => match Url::parse(secret.expose_secret()) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                Err(_) => "postgres://***".to_string(),
            },
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Database pool bounds.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// Where the data lives.
    pub url: DatabaseUrl,
    /// Most connections the pool opens.
    pub pool_max: u32,
    /// Longest wait for a free connection before answering 503.
    pub acquire_timeout: Duration,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
}

/// Reads `DATABASE_URL` and the `DB_*` bounds.
pub(super) fn read_db(reader: &mut Reader<'_>) -> Option<DbSettings> {
    let url = reader.required("DATABASE_URL").and_then(|text| {
        DatabaseUrl::parse(text.trim())
            .map_err(|why| {
                reader.problems.push(Problem(format!(
                    "Environment variable 'DATABASE_URL' is not usable: {why}."
                )))
            })
            .ok()
    });
    let pool_max = reader.number("DB_POOL_MAX", 10, 1..=1000);
    let acquire_timeout = reader.millis("DB_ACQUIRE_TIMEOUT_MS", 2000, 1..=600_000);
    let statement_timeout = reader.millis("DB_STATEMENT_TIMEOUT_MS", 5000, 1..=600_000);
    Some(DbSettings {
        url: url?,
        pool_max,
        acquire_timeout,
        statement_timeout,
    })
}

/// The database settings alone, for commands that need nothing else (`migrate`,
/// `catalog import`) and for checking the database when other settings are wrong.
pub fn database_settings(source: &Source) -> Result<DbSettings, Vec<Problem>> {
    let mut reader = Reader {
        source,
        problems: Vec::new(),
    };
    match read_db(&mut reader) {
        Some(db) if reader.problems.is_empty() => Ok(db),
        _ => Err(reader.problems),
    }
}
