//! Database access for SQLite (the embedded default) and PostgreSQL (production).
//!
//! Each operation is written once: its SQL is portable and its body is expanded for
//! both drivers by `with_read!`, `with_write!` and `with_tx!`, so the two backends cannot drift
//! apart, and the conformance tests run the same operations against both. Every
//! call is bounded: waiting for a connection by `DB_ACQUIRE_TIMEOUT_MS`, statements
//! by `DB_STATEMENT_TIMEOUT_MS` (server-side on PostgreSQL), and the whole call by
//! their sum, so a database that stops answering yields an error, never a hang. A
//! call cut short (by those bounds, or because its request went away) closes its
//! connection instead of returning it to the pool ([`Leased`]).
//! Each call's future is boxed: both drivers' states would otherwise be carried,
//! and copied, by every future that awaits a store call.
//!
//! The writes on a checkout's path are [`writer::Operation`]s instead, bodies
//! written once over a small connection trait: on SQLite they run on a dedicated
//! writer thread that commits concurrent checkouts together (see [`writer`]).
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a pool of readers, one writing
//! connection for the rarer writes (writes queue instead of spinning on
//! `SQLITE_BUSY`), and the writer thread, the two taking turns. The steps that
//! precede a side effect (reserving stock, charging a card) are committed with
//! `synchronous=FULL`, so the record of a charge is on disk before the charge is
//! sent, and everyone in the same batch shares that one sync. The writer's log is
//! copied back into the database file by a thread of its own ([`checkpointer`]).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Database, Pool};

use crate::config::{DatabaseUrl, DbSettings};

/// Runs `$body` with `$conn` bound to `$pooled`'s connection (a [`Leased`] one),
/// then gives the connection back to the pool. If the call is dropped before
/// `$body` has finished, the connection is closed instead.
macro_rules! on_lease {
    ($pooled:ident, |$conn:ident| $body:expr) => {{
        let result = async {
            let $conn = &mut *$pooled;
            $body
        }
        .await;
        $pooled.finish();
        result
    }};
}

/// Runs `$body` with `$conn` bound to a pooled reading connection (`&mut` to the
/// driver's connection type), once per backend.
macro_rules! with_read {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let store: &$crate::store::Store = $store;
        store
            .bounded(Box::pin(async move {
                match &store.backend {
                    $crate::store::Backend::Sqlite { read, .. } => {
                        let mut pooled = store.acquire(read).await?;
                        on_lease!(pooled, |$conn| $body)
                    }
                    $crate::store::Backend::Postgres(pool) => {
                        let mut pooled = store.acquire(pool).await?;
                        on_lease!(pooled, |$conn| $body)
                    }
                }
            }))
            .await
    }};
}

/// Runs `$body` with `$conn` bound to a writing connection, outside a transaction:
/// for single statements, which are atomic on their own.
macro_rules! with_write {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let store: &$crate::store::Store = $store;
        store
            .bounded(Box::pin(async move {
                match &store.backend {
                    $crate::store::Backend::Sqlite { write, writer, .. } => {
                        let _turn = writer.turn.lock().await;
                        let mut pooled = store.acquire(write).await?;
                        on_lease!(pooled, |$conn| $body)
                    }
                    $crate::store::Backend::Postgres(pool) => {
                        let mut pooled = store.acquire(pool).await?;
                        on_lease!(pooled, |$conn| $body)
                    }
                }
            }))
            .await
    }};
}

/// Runs `$body` in the transaction that `$begin` opens, with `$tx` bound to it;
/// commits if `$body` returns `Ok`, rolls back otherwise.
macro_rules! in_transaction {
    ($begin:expr, |$tx:ident| $body:expr) => {{
        let mut tx = $begin.await.map_err($crate::store::StoreError::from)?;
        let result = {
            let $tx = &mut *tx;
            $body
        };
        if result.is_ok() {
            tx.commit().await.map_err($crate::store::StoreError::from)?;
        }
        result
    }};
}

/// Runs `$body` in a write transaction with `$tx` bound to its connection; commits
/// if `$body` returns `Ok`, rolls back otherwise.
macro_rules! with_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let store: &$crate::store::Store = $store;
        store
            .bounded(Box::pin(async move {
                match &store.backend {
                    $crate::store::Backend::Sqlite { write, writer, .. } => {
                        let _turn = writer.turn.lock().await;
                        let mut pooled = store.acquire(write).await?;
                        // IMMEDIATE takes the write lock up front, so a transaction that
                        // reads before it writes cannot deadlock with another process.
                        on_lease!(pooled, |conn| in_transaction!(
                            sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE"),
                            |$tx| $body
                        ))
                    }
                    $crate::store::Backend::Postgres(pool) => {
                        let mut pooled = store.acquire(pool).await?;
                        on_lease!(pooled, |conn| in_transaction!(sqlx::Connection::begin(conn), |$tx| {
                            $body
                        }))
                    }
                }
            }))
            .await
    }};
}

pub mod attempts;
pub mod carts;
pub mod catalog;
pub(crate) mod checkpointer;
pub mod idempotency;
pub mod migrations;
pub mod orders;
pub(crate) mod writer;

/// The cause behind a [`StoreError`], from whichever driver reported it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every connection stayed busy for `DB_ACQUIRE_TIMEOUT_MS`.
    #[error("no database connection became free within {0:?} (pool exhausted)")]
    PoolExhausted(Duration),
    /// A statement or the whole call ran past its bound.
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
    /// The statement was cancelled by the server's statement timeout, or waited too
    /// long for a lock.
    #[error("a database statement was cancelled after running too long")]
    StatementTimeout(#[source] BoxError),
    /// The database cannot be reached or dropped the connection.
    #[error("the database is unreachable")]
    Unreachable(#[source] BoxError),
    /// The database's file system is full: nothing can be written until space is made.
    #[error("the database's disk is full")]
    DiskFull(#[source] BoxError),
    /// Anything else: a bug or a schema that does not match this build.
    #[error("database query failed")]
    Query(#[source] BoxError),
    /// A stored value this build cannot read.
    #[error("the database holds an unreadable value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the database is down or overloaded rather than the query being wrong:
    /// the client should retry later (503), not report a bug (500).
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, StoreError::Query(_) | StoreError::Corrupt(_))
    }

    /// The same error again, for one more caller (the cause kept as its message).
    pub(crate) fn again(&self) -> StoreError {
        let cause = |error: &BoxError| -> BoxError { error.to_string().into() };
        match self {
            StoreError::PoolExhausted(waited) => StoreError::PoolExhausted(*waited),
            StoreError::TimedOut(waited) => StoreError::TimedOut(*waited),
            StoreError::StatementTimeout(error) => StoreError::StatementTimeout(cause(error)),
            StoreError::Unreachable(error) => StoreError::Unreachable(cause(error)),
            StoreError::DiskFull(error) => StoreError::DiskFull(cause(error)),
            StoreError::Query(error) => StoreError::Query(cause(error)),
            StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
        }
    }

    /// The error and every cause beneath it, in one line: what an operator reads.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(current) = cause {
            let words = current.to_string();
            if !text.contains(&words) {
                text.push_str(": ");
                text.push_str(&words);
            }
            cause = current.source();
        }
        text
    }

    /// A short name for logs and the `errors_total` metric.
    pub fn class(&self) -> &'static str {
        match self {
            StoreError::PoolExhausted(_) => "DbPoolExhausted",
            StoreError::TimedOut(_) | StoreError::StatementTimeout(_) => "DbTimeout",
            StoreError::Unreachable(_) => "DbUnreachable",
            StoreError::DiskFull(_) => "DbDiskFull",
            StoreError::Query(_) => "DbQueryError",
            StoreError::Corrupt(_) => "DbCorruptValue",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        // The driver's own words, once: its wrappers' prefixes add nothing an
        // operator needs, and its chain would repeat the same cause.
        let words = || -> BoxError { driver_words(&error).into() };
        match &error {
            sqlx::Error::PoolTimedOut => StoreError::PoolExhausted(Duration::ZERO),
            sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
                StoreError::Unreachable(words())
            }
            sqlx::Error::Database(db) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => db
                .code()
                .and_then(|code| code.parse().ok())
                .map_or_else(|| StoreError::Query(words()), |code| sqlite_code_error(code, words())),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    // PostgreSQL: query_canceled (statement_timeout), lock_not_available.
                    "57014" | "55P03" => StoreError::StatementTimeout(words()),
                    // PostgreSQL: connection exceptions, shutdown, too many connections,
                    // serialization failure and deadlock (both safe to retry).
                    c if c.starts_with("08")
                        || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01") =>
                    {
                        StoreError::Unreachable(words())
                    }
                    "53100" => StoreError::DiskFull(words()),
                    _ => StoreError::Query(words()),
                }
            }
            _ => StoreError::Query(words()),
        }
    }
}

/// Sorts an SQLite result code (primary or extended), whether it came through the
/// driver's pool or the writer's own connection: a busy or locked database is a
/// statement that waited too long; a full disk is [`StoreError::DiskFull`]; a
/// database that cannot be opened, read or written (out of descriptors, an I/O
/// error, permissions, a read-only file system, a file that is not a database) is
/// unreachable, not a bug; the rest are [`StoreError::Query`].
pub(crate) fn sqlite_code_error(code: i32, words: BoxError) -> StoreError {
    use rusqlite::ErrorCode;
    match rusqlite::ffi::Error::new(code).code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::StatementTimeout(words),
        ErrorCode::DiskFull => StoreError::DiskFull(words),
        ErrorCode::CannotOpen
        | ErrorCode::SystemIoFailure
        | ErrorCode::NotADatabase
        | ErrorCode::PermissionDenied
        | ErrorCode::ReadOnly => StoreError::Unreachable(words),
        _ => StoreError::Query(words),
    }
}

/// What the driver itself says of `error`: the database's message with its code
/// (SQLSTATE for PostgreSQL, the result code for SQLite), or the OS error of a
/// connection, without sqlx's own prefixes.
pub fn driver_words(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => {
            let from_sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            match db.code() {
                Some(code) if from_sqlite => format!("{} (SQLite code {code})", db.message()),
                Some(code) => format!("{} (SQLSTATE {code})", db.message()),
                None => db.message().to_string(),
            }
        }
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::Configuration(why) => why.to_string(),
        sqlx::Error::Migrate(migrate) => migration_words(migrate),
        other => other.to_string(),
    }
}

/// What a failed migration says, in the driver's words.
pub fn migration_words(error: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;
    match error {
        MigrateError::Execute(error) => driver_words(error),
        MigrateError::ExecuteMigration(error, version) => {
            format!("migration {version} failed: {}", driver_words(error))
        }
        other => other.to_string(),
    }
}

/// Which database the store talks to.
pub(crate) enum Backend {
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        writer: writer::Writer,
    },
    Postgres(PgPool),
}

/// Connection pool usage, as reported by `/metrics` and the `resources` record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolSnapshot {
    /// Connections lent out.
    pub active: u32,
    /// Connections open and free.
    pub idle: u32,
    /// Most connections the pool may open.
    pub max: u32,
    /// Callers waiting for a connection.
    pub pending: u32,
}

#[derive(Default)]
struct PoolCounters {
    pending: Arc<AtomicU32>,
    acquire_timeouts: AtomicU64,
}

/// Decrements the pending-acquire gauge when the wait ends, however it ends.
struct PendingGuard<'a>(&'a AtomicU32);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pooled connection that goes back to the pool only once the call using it has
/// finished ([`Leased::finish`]), with an answer or an error. If the call stops
/// earlier (its future dropped: the request went away, or a timeout ran out), the
/// connection is closed instead: it may be in the middle of a statement or a
/// transaction, and the drivers do not always know which. sqlx counts a `BEGIN`
/// only once its answer has come, so a call dropped while waiting for that answer
/// would return a connection whose server is in a transaction that sqlx does not
/// know of, and the next call on it, a single statement meant to commit on its own,
/// would stay uncommitted inside it. Closing the connection ends whatever it was in
/// (the server rolls back an open transaction).
pub(crate) struct Leased<DB: Database> {
    conn: PoolConnection<DB>,
    finished: bool,
}

impl<DB: Database> Leased<DB> {
    /// The call is over: the connection may serve the next one.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl<DB: Database> std::ops::Deref for Leased<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> std::ops::DerefMut for Leased<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> Drop for Leased<DB> {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// The database behind the service.
pub struct Store {
    pub(crate) backend: Backend,
    counters: Arc<PoolCounters>,
    acquire_timeout: Duration,
    call_timeout: Duration,
    pool_max: u32,
    done: attempts::DoneRecords,
}

impl Store {
    /// Prepares the pools; no connection is opened until the first call.
    pub fn connect_lazy(settings: &DbSettings) -> Result<Store, StoreError> {
        let counters = Arc::new(PoolCounters::default());
        let backend = match &settings.url {
            DatabaseUrl::Sqlite { path } => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Durability comes from the writer's batches, where it matters.
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(settings.statement_timeout);
                let write = pool_options(1, settings.acquire_timeout).connect_lazy_with(options.clone());
                let read = pool_options(settings.pool_max, settings.acquire_timeout).connect_lazy_with(options);
                let writer = writer::WriterOptions {
                    path: path.into(),
                    busy_timeout: settings.statement_timeout,
                    checkpoints: checkpointer::CheckpointPolicy::default(),
                };
                Backend::Sqlite {
                    read,
                    write,
                    writer: writer::Writer::start(writer, counters.pending.clone()),
                }
            }
            DatabaseUrl::Postgres(url) => {
                let statement_ms = settings.statement_timeout.as_millis().to_string();
                let options = PgConnectOptions::from_str(url.expose_secret())
                    .map_err(|error| StoreError::Unreachable(error.into()))?
                    .application_name("checkout-service")
                    .options([
                        ("statement_timeout", statement_ms.as_str()),
                        ("lock_timeout", statement_ms.as_str()),
                    ]);
                Backend::Postgres(pool_options(settings.pool_max, settings.acquire_timeout).connect_lazy_with(options))
            }
        };
        let pool_max = match &backend {
            Backend::Sqlite { .. } => settings.pool_max + 1,
            Backend::Postgres(_) => settings.pool_max,
        };
        Ok(Store {
            backend,
            counters,
            acquire_timeout: settings.acquire_timeout,
            call_timeout: settings.acquire_timeout + settings.statement_timeout,
            pool_max,
            done: attempts::DoneRecords::default(),
        })
    }

    /// Runs a write [`writer::Operation`]: on SQLite in the writer's next batch, on
    /// PostgreSQL in a transaction of its own (or none, for a single statement).
    pub(crate) async fn apply<O: writer::Operation>(&self, operation: O) -> Result<O::Output, StoreError> {
        use tracing::Instrument as _;
        let name = std::any::type_name::<O>().rsplit("::").next().unwrap_or("transaction");
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let span = crate::telemetry::trace::db_span("sqlite", name);
                self.bounded(writer.run(operation)).instrument(span).await
            }
            // Boxed: the PostgreSQL path's state takes kilobytes, which every
            // caller's future (and every task that settles the stock) would
            // otherwise carry and copy, on either database.
            Backend::Postgres(pool) => {
                let span = crate::telemetry::trace::db_span("postgresql", name);
                Box::pin(self.apply_on(pool, operation).instrument(span)).await
            }
        }
    }

    async fn apply_on<O: writer::Operation>(&self, pool: &PgPool, operation: O) -> Result<O::Output, StoreError> {
        self.bounded(async {
            let mut pooled = self.acquire(pool).await?;
            on_lease!(pooled, |conn| {
                if O::SINGLE_STATEMENT {
                    return operation.run(conn).await;
                }
                in_transaction!(sqlx::Connection::begin(conn), |tx| operation.run(tx).await)
            })
        })
        .await
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Opens one connection of its own (not the pool's, which would retry until its
    /// timeout and keep only that it timed out) and runs `SELECT 1` on it, bounded
    /// by `timeout`: at startup, why the database cannot be used, in its own words.
    pub async fn check_connection(&self, timeout: Duration) -> Result<(), StoreError> {
        use sqlx::ConnectOptions as _;
        let check = async {
            match &self.backend {
                Backend::Sqlite { read, .. } => {
                    let mut conn = read.connect_options().connect().await?;
                    sqlx::query("SELECT 1").execute(&mut conn).await?;
                    let _ = sqlx::Connection::close(conn).await;
                }
                Backend::Postgres(pool) => {
                    let mut conn = pool.connect_options().connect().await?;
                    sqlx::query("SELECT 1").execute(&mut conn).await?;
                    let _ = sqlx::Connection::close(conn).await;
                }
            }
            Ok::<_, StoreError>(())
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut(timeout)),
        }
    }

    /// Runs `SELECT 1`, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let ping = async {
            with_read!(self, |conn| {
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                Ok::<_, StoreError>(())
            })
        };
        match tokio::time::timeout(timeout, ping).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut(timeout)),
        }
    }

    /// Current pool usage.
    pub fn pool_snapshot(&self) -> PoolSnapshot {
        let (size, idle) = match &self.backend {
            Backend::Sqlite { read, write, .. } => (read.size() + write.size(), read.num_idle() + write.num_idle()),
            Backend::Postgres(pool) => (pool.size(), pool.num_idle()),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        PoolSnapshot {
            active: size.saturating_sub(idle),
            idle,
            max: self.pool_max,
            pending: self.counters.pending.load(Ordering::Relaxed),
        }
    }

    /// How many times a caller gave up waiting for a connection.
    pub fn acquire_timeouts(&self) -> u64 {
        self.counters.acquire_timeouts.load(Ordering::Relaxed)
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { read, write, writer } => {
                writer.close(self.call_timeout).await;
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    pub(crate) async fn acquire<DB: Database>(&self, pool: &Pool<DB>) -> Result<Leased<DB>, StoreError> {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&self.counters.pending);
        let conn = pool.acquire().await.map_err(|error| match error {
            sqlx::Error::PoolTimedOut => {
                self.counters.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                StoreError::PoolExhausted(self.acquire_timeout)
            }
            other => StoreError::from(other),
        })?;
        Ok(Leased { conn, finished: false })
    }

    /// Bounds a whole call, whatever the server does.
    pub(crate) async fn bounded<T, E: From<StoreError>>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut(self.call_timeout).into()),
        }
    }
}

fn pool_options<DB: Database>(max: u32, acquire_timeout: Duration) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        // A broken connection surfaces as an error on use; pinging before every
        // acquire would add a round trip to every query.
        .test_before_acquire(false)
        .idle_timeout(Some(Duration::from_secs(300)))
}

/// Typed column access shared by both drivers' rows, so row mappers are written once.
pub(crate) trait RowExt {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
}

macro_rules! impl_row_ext {
    ($($row:ty),*) => {$(
        impl RowExt for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                sqlx::Row::try_get(self, column).map_err(|e| StoreError::Query(e.into()))
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                sqlx::Row::try_get(self, column).map_err(|e| StoreError::Query(e.into()))
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                sqlx::Row::try_get(self, column).map_err(|e| StoreError::Query(e.into()))
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                sqlx::Row::try_get(self, column).map_err(|e| StoreError::Query(e.into()))
            }
        }
    )*};
}

impl_row_ext!(sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

/// Parses a stored value with `parse`, reporting unreadable ones.
pub(crate) fn parse_stored<T, E: std::fmt::Display>(
    what: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(text).map_err(|e| StoreError::Corrupt(format!("{what} {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file that is not there, in a directory that is.
    fn missing_database() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}.db", crate::domain::ids::random_id("absent-")))
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_unreachable_through_the_pool_and_the_writer() {
        let missing = missing_database();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&missing)
            .create_if_missing(false);
        let pooled = sqlx::SqlitePool::connect_with(options)
            .await
            .map(drop)
            .expect_err("nothing to open");
        let pooled = StoreError::from(pooled);
        assert!(matches!(pooled, StoreError::Unreachable(_)), "{pooled:?}");
        assert_eq!(
            pooled.with_causes(),
            "the database is unreachable: unable to open database file (SQLite code 14)"
        );

        let written = rusqlite::Connection::open_with_flags(&missing, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map(drop)
            .expect_err("nothing to open");
        let written = writer::sqlite_error(written);
        assert!(matches!(written, StoreError::Unreachable(_)), "{written:?}");
        assert!(pooled.is_unavailable() && written.is_unavailable());
    }

    #[test]
    fn sqlite_codes_are_sorted_by_their_primary_code() {
        let sorted = |code| sqlite_code_error(code, "words".into()).class();
        // BUSY, BUSY_SNAPSHOT, LOCKED.
        for busy in [5, 517, 6] {
            assert_eq!(sorted(busy), "DbTimeout", "{busy}");
        }
        assert_eq!(sorted(13), "DbDiskFull");
        // CANTOPEN, IOERR_READ, NOTADB, PERM, READONLY.
        for unreachable in [14, 266, 26, 3, 8] {
            assert_eq!(sorted(unreachable), "DbUnreachable", "{unreachable}");
        }
        // ERROR (no such table), CONSTRAINT_UNIQUE: the query or the schema is wrong.
        for bug in [1, 2067] {
            assert_eq!(sorted(bug), "DbQueryError", "{bug}");
        }
    }
}
