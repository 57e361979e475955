//! The writes on a checkout's path, as operations written once for both databases.
//!
//! An [`Operation`] is a short async body over [`Exec`], a connection that runs SQL
//! with numbered parameters (`$1`, `$2`, ...). On PostgreSQL it runs on a pooled
//! connection like any other call. On SQLite it runs on [`Writer`]: one thread that
//! owns a connection of its own, takes every operation queued while it was busy,
//! runs them in one transaction and answers them all once that transaction has
//! committed. One failing changes nothing of the others: the batch is then rolled
//! back and run again with each operation in a savepoint of its own. Savepoints are
//! not set up front: SQLite copies aside every page changed under one, and batches
//! seldom fail. Statements there are plain function calls on the writer's thread, not
//! round trips to a driver's thread, and concurrent checkouts share one commit; an
//! operation that must be on disk before a side effect (a charge, a reservation)
//! makes its batch commit with `synchronous=FULL`, so one sync of the WAL covers
//! everyone in it.
//!
//! The writer and the pool's writing connection take turns through [`Writer::turn`],
//! so neither ever waits on the other inside SQLite's busy handler. Copying the log
//! back into the database file is left to a [`Checkpointer`] thread.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};

use super::checkpointer::{AfterCommit, CheckpointPolicy, Checkpointer, LogWatch};
use super::{RowExt, StoreError};

/// Most operations committed together.
const MAX_BATCH: usize = 128;

/// A value bound to a numbered parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    OptText(Option<&'a str>),
    OptInt(Option<i64>),
}

/// A connection inside a write transaction.
pub(crate) trait Exec: Send {
    /// A row of a query's result.
    type Row: RowExt + Send;

    /// Runs one statement that returns no rows; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs one query and returns all its rows.
    fn fetch(&mut self, sql: &str, args: &[Arg<'_>])
    -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;
}

/// A write made of one or more statements, committed as one. Cloned so that it can
/// run a second time if its batch has to be run again.
pub(crate) trait Operation: Send + Clone + 'static {
    /// What the caller gets back.
    type Output: Send + 'static;

    /// Whether the caller needs the result on disk before it goes on (it is about
    /// to act outside the database on the strength of it).
    const DURABLE: bool;

    /// True for one statement, which needs no transaction around it on PostgreSQL.
    const SINGLE_STATEMENT: bool = false;

    /// The statements, and what to make of their results. Returning an error rolls
    /// back everything this operation did.
    fn run<E: Exec>(self, db: &mut E) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

impl Exec for sqlx::PgConnection {
    type Row = sqlx::postgres::PgRow;

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let query = pg_query(sql, args);
        Ok(query.execute(&mut *self).await?.rows_affected())
    }

    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Self::Row>, StoreError> {
        let query = pg_query(sql, args);
        Ok(query.fetch_all(&mut *self).await?)
    }
}

fn pg_query<'q>(sql: &'q str, args: &[Arg<'q>]) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    // Every operation's SQL is a constant or built only of placeholders.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for arg in args {
        query = match *arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
            Arg::OptText(text) => query.bind(text),
            Arg::OptInt(int) => query.bind(int),
        };
    }
    query
}

/// SQLite's side of [`Exec`]: the writer thread's own connection.
struct SqliteExec {
    conn: rusqlite::Connection,
}

impl SqliteExec {
    fn statement(&self, sql: &str, args: &[Arg<'_>]) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(sqlite_error)?;
        for index in 1..=statement.parameter_count() {
            // Parameters are named `$N`: bind argument N, wherever it appears.
            let number = statement
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("parameter {index} of {sql:?} is not numbered")))?;
            let arg = args
                .get(number - 1)
                .ok_or_else(|| StoreError::Corrupt(format!("no argument for ${number} of {sql:?}")))?;
            let bound = match *arg {
                Arg::Text(text) => statement.raw_bind_parameter(index, text),
                Arg::Int(int) => statement.raw_bind_parameter(index, int),
                Arg::OptText(text) => statement.raw_bind_parameter(index, text),
                Arg::OptInt(int) => statement.raw_bind_parameter(index, int),
            };
            bound.map_err(sqlite_error)?;
        }
        Ok(statement)
    }
}

impl SqliteExec {
    /// Runs a transaction-control statement, prepared once.
    fn control(&self, sql: &str) -> Result<(), StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(sqlite_error)?;
        statement.raw_execute().map_err(sqlite_error)?;
        Ok(())
    }
}

impl Exec for SqliteExec {
    type Row = OwnedRow;

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let changed = self.statement(sql, args)?.raw_execute().map_err(sqlite_error)?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<OwnedRow>, StoreError> {
        let mut statement = self.statement(sql, args)?;
        let columns: Arc<[String]> = statement.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = statement.raw_query();
        let mut owned = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let values = (0..columns.len())
                .map(|i| row.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(sqlite_error)?;
            owned.push(OwnedRow {
                columns: columns.clone(),
                values,
            });
        }
        Ok(owned)
    }
}

/// A row read on the writer's connection.
pub(crate) struct OwnedRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl OwnedRow {
    fn value(&self, column: &str) -> Result<ValueRef<'_>, StoreError> {
        self.columns
            .iter()
            .position(|c| c == column)
            .and_then(|i| self.values.get(i))
            .map(ValueRef::from)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {column:?} in the row")))
    }

    fn typed<T: rusqlite::types::FromSql>(&self, column: &str) -> Result<T, StoreError> {
        T::column_result(self.value(column)?).map_err(|e| StoreError::Corrupt(format!("column {column:?}: {e}")))
    }
}

impl RowExt for OwnedRow {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.typed(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.typed(column)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.typed(column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.typed(column)
    }
}

/// SQLite's own words for `error`: its message (`no such table: orders`) with the
/// result code, not the code's generic text (`SQL logic error`) beside it.
fn sqlite_words(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(failure, Some(message)) => {
            format!("{message} (SQLite code {})", failure.extended_code)
        }
        rusqlite::Error::SqliteFailure(failure, None) => {
            format!("{failure} (SQLite code {})", failure.extended_code)
        }
        other => other.to_string(),
    }
}

/// Sorts an error from the writer's connection as the pool's are sorted.
pub(super) fn sqlite_error(error: rusqlite::Error) -> StoreError {
    let words: super::BoxError = sqlite_words(&error).into();
    match &error {
        rusqlite::Error::SqliteFailure(failure, _) => super::sqlite_code_error(failure.extended_code, words),
        _ => StoreError::Query(words),
    }
}

/// One queued operation, its result, and where the result goes.
trait Job: Send {
    /// The caller stopped waiting (its request ended): running it would help no one.
    fn abandoned(&self) -> bool;
    fn durable(&self) -> bool;
    /// Runs the operation in the batch's transaction with nothing around it; its
    /// result stands if the batch commits. Returns whether it succeeded.
    fn run_together(&mut self, db: &mut SqliteExec) -> bool;
    /// Runs the operation in a savepoint of its own, so that failing undoes only
    /// what it did.
    fn run_alone(&mut self, db: &mut SqliteExec);
    /// Answers the caller once the batch's transaction has ended: with the result
    /// if it committed, otherwise with why it did not.
    fn answer(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Queued<O: Operation> {
    operation: Option<O>,
    result: Option<Result<O::Output, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<O::Output, StoreError>>,
}

impl<O: Operation> Job for Queued<O> {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn durable(&self) -> bool {
        O::DURABLE
    }

    fn run_together(&mut self, db: &mut SqliteExec) -> bool {
        let Some(operation) = &self.operation else {
            return false;
        };
        let result = run_guarded(operation.clone(), db);
        let succeeded = result.is_ok();
        self.result = Some(result);
        succeeded
    }

    fn run_alone(&mut self, db: &mut SqliteExec) {
        let Some(operation) = self.operation.take() else {
            return;
        };
        let savepoint = db.control("SAVEPOINT operation");
        let result = savepoint.and_then(|()| run_guarded(operation, db));
        let end = match &result {
            Ok(_) => db.control("RELEASE operation"),
            Err(_) => db
                .control("ROLLBACK TO operation")
                .and_then(|()| db.control("RELEASE operation")),
        };
        self.result = Some(end.and(result));
    }

    fn answer(self: Box<Self>, commit: Result<(), &StoreError>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Corrupt("a queued database operation never ran".to_owned())),
            (Err(error), _) => Err(error.again()),
        };
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(answer);
    }
}

/// Runs `operation` on the writer's connection; a panic becomes an error.
fn run_guarded<O: Operation>(operation: O, db: &mut SqliteExec) -> Result<O::Output, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| run_now(operation.run(db))))
        .unwrap_or_else(|_| Err(StoreError::Corrupt("a database operation panicked".to_owned())))
}

/// Polls a future that never waits: every [`Exec`] call on SQLite runs at once.
fn run_now<T>(future: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StoreError::Corrupt(
            "a database operation waited on SQLite's writer".to_owned(),
        )),
    }
}

enum Message {
    Job(Box<dyn Job>),
    Close(tokio::sync::oneshot::Sender<()>),
}

/// SQLite's writer thread, and the turn it shares with the pool's writing connection.
pub(crate) struct Writer {
    jobs: std::sync::mpsc::Sender<Message>,
    /// Held by whoever writes: the writer thread for a batch, or a caller for the
    /// time it holds the pool's writing connection.
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
    /// Operations queued and not yet taken into a batch (the store's pending gauge:
    /// for SQLite's writes the queue is what callers wait in).
    pending: Arc<AtomicU32>,
}

/// How the writer opens its connection.
pub(crate) struct WriterOptions {
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) checkpoints: CheckpointPolicy,
}

impl Writer {
    /// Starts the thread; its connection is opened with the first operation (and
    /// opened again after an error that may have broken it).
    pub(crate) fn start(options: WriterOptions, pending: Arc<AtomicU32>) -> Writer {
        let (jobs, queue) = std::sync::mpsc::channel();
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let thread_turn = turn.clone();
        let thread_pending = pending.clone();
        let started = std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || write_loop(&options, &queue, &thread_turn, &thread_pending));
        if let Err(error) = started {
            // Without the thread every operation fails with the writer gone: the
            // service answers 503 for them, as for any database it cannot reach.
            tracing::error!(event = "sqlite_writer", error = %error, "could not start SQLite's writer thread");
        }
        Writer { jobs, turn, pending }
    }

    /// Runs `operation` in the writer's next batch; returns once that batch has
    /// committed (or failed to).
    pub(crate) async fn run<O: Operation>(&self, operation: O) -> Result<O::Output, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Queued {
            operation: Some(operation),
            result: None,
            reply,
        });
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Message::Job(job)).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(writer_gone());
        }
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Finishes what is queued, then closes the connection; waits at most `bound`.
    pub(crate) async fn close(&self, bound: Duration) {
        let (done, closed) = tokio::sync::oneshot::channel();
        if self.jobs.send(Message::Close(done)).is_ok() {
            let _ = tokio::time::timeout(bound, closed).await;
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unreachable("SQLite's writer thread has stopped".into())
}

fn write_loop(
    options: &WriterOptions,
    queue: &std::sync::mpsc::Receiver<Message>,
    turn: &tokio::sync::Mutex<()>,
    pending: &AtomicU32,
) {
    let mut db: Option<SqliteExec> = None;
    let mut synchronous_full = false;
    let mut log = LogWatch::default();
    let checkpointer = Checkpointer::start(options.path.clone(), options.busy_timeout)
        .inspect_err(|error| {
            // The writer then checkpoints itself, as SQLite would.
            tracing::warn!(event = "sqlite_checkpoint", error = %error, "could not start SQLite's checkpoint thread");
        })
        .ok();
    while let Ok(first) = queue.recv() {
        let mut batch: Vec<Box<dyn Job>> = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => batch.push(job),
                Message::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let taken = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        pending.fetch_sub(taken, Ordering::Relaxed);
        batch.retain(|job| !job.abandoned());
        if !batch.is_empty() {
            let durable = batch.iter().any(|job| job.durable());
            let outcome = {
                let _turn = turn.blocking_lock();
                commit_batch(options, &mut db, &mut synchronous_full, durable, &mut batch)
            };
            if let Err(error) = &outcome {
                // The connection may be what broke: open a new one next time.
                tracing::warn!(event = "sqlite_writer", error = %error, "a batch of database writes failed");
                db = None;
            }
            for job in batch {
                job.answer(outcome.as_ref().map(|_| ()));
            }
            if let Some(db) = &db {
                keep_log_bounded(db, &mut log, options.checkpoints, checkpointer.as_ref());
            }
        }
        if let Some(done) = close {
            drop(db.take());
            drop(checkpointer);
            let _ = done.send(());
            return;
        }
    }
}

thread_local! {
    /// Pages in SQLite's log after the writer's latest commit, as its WAL hook
    /// reports them (the hook runs inside the commit, on the writer's thread).
    static LOG_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// The writer connection's WAL hook. Setting it also turns off SQLite's automatic
/// checkpoint on that connection, which the checkpointer thread takes over.
fn note_log_frames(_wal: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    LOG_FRAMES.set(frames);
    Ok(())
}

/// After a commit: asks the checkpoint thread for a checkpoint every so many new
/// pages, and makes one here when the log must start over (or the thread is gone).
fn keep_log_bounded(
    db: &SqliteExec,
    log: &mut LogWatch,
    policy: CheckpointPolicy,
    checkpointer: Option<&Checkpointer>,
) {
    let frames = LOG_FRAMES.replace(0);
    let here = match log.after_commit(policy, frames) {
        AfterCommit::Nothing => false,
        AfterCommit::Request => !checkpointer.is_some_and(Checkpointer::request),
        AfterCommit::Checkpoint => true,
    };
    if here && let Err(error) = super::checkpointer::checkpoint(&db.conn) {
        tracing::warn!(event = "sqlite_checkpoint", error = %error, frames, "a checkpoint of SQLite's log failed");
    }
}

fn commit_batch(
    options: &WriterOptions,
    db: &mut Option<SqliteExec>,
    synchronous_full: &mut bool,
    durable: bool,
    batch: &mut [Box<dyn Job>],
) -> Result<(), StoreError> {
    let db = match db {
        Some(db) => db,
        None => {
            *synchronous_full = false;
            db.insert(open(options)?)
        }
    };
    if *synchronous_full != durable {
        let level = if durable { "FULL" } else { "NORMAL" };
        db.conn
            .pragma_update(None, "synchronous", level)
            .map_err(sqlite_error)?;
        *synchronous_full = durable;
    }
    // IMMEDIATE takes the write lock up front, so a batch that reads before it
    // writes cannot deadlock with another process.
    db.control("BEGIN IMMEDIATE")?;
    // `all` stops at the first failure: what ran before it is rolled back and run
    // again, with the rest, each in its own savepoint.
    if !batch.iter_mut().all(|job| job.run_together(db)) {
        // Some errors end the transaction by themselves.
        if !db.conn.is_autocommit() {
            db.control("ROLLBACK")?;
        }
        db.control("BEGIN IMMEDIATE")?;
        for job in batch.iter_mut() {
            job.run_alone(db);
        }
    }
    if let Err(error) = db.control("COMMIT") {
        // Nothing of the batch stays: end the transaction if SQLite has not.
        let _ = db.control("ROLLBACK");
        return Err(error);
    }
    Ok(())
}

fn open(options: &WriterOptions) -> Result<SqliteExec, StoreError> {
    let conn = rusqlite::Connection::open(&options.path).map_err(sqlite_error)?;
    conn.busy_timeout(options.busy_timeout).map_err(sqlite_error)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite_error)?;
    // Each operation's savepoint journals the pages it changes: in memory, not in
    // a temporary file written and thrown away with every batch.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(sqlite_error)?;
    // Room for every operation's statements and the transaction controls.
    conn.set_prepared_statement_cache_capacity(64);
    conn.wal_hook(Some(note_log_frames));
    Ok(SqliteExec { conn })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `id`, then fails if asked to: its row must not survive.
    #[derive(Clone)]
    struct Insert {
        id: i64,
        fail: bool,
    }

    impl Operation for Insert {
        type Output = u64;
        const DURABLE: bool = true;

        async fn run<E: Exec>(self, db: &mut E) -> Result<u64, StoreError> {
            let inserted = db
                .execute("INSERT INTO t (id) VALUES ($1)", &[Arg::Int(self.id)])
                .await?;
            if self.fail {
                return Err(StoreError::Corrupt("failing on purpose".to_owned()));
            }
            Ok(inserted)
        }
    }

    /// Inserts `id`, then panics.
    #[derive(Clone)]
    struct Panics {
        id: i64,
    }

    impl Operation for Panics {
        type Output = u64;
        const DURABLE: bool = false;

        async fn run<E: Exec>(self, db: &mut E) -> Result<u64, StoreError> {
            db.execute("INSERT INTO t (id) VALUES ($1)", &[Arg::Int(self.id)])
                .await?;
            panic!("operation {} panics on purpose", self.id);
        }
    }

    /// Inserts a row of 3,000 bytes: at least one new page in the log per commit.
    #[derive(Clone)]
    struct Bulky {
        id: i64,
    }

    impl Operation for Bulky {
        type Output = u64;
        const DURABLE: bool = false;

        async fn run<E: Exec>(self, db: &mut E) -> Result<u64, StoreError> {
            db.execute(
                "INSERT INTO t (id, bulk) VALUES ($1, zeroblob(3000))",
                &[Arg::Int(self.id)],
            )
            .await
        }
    }

    /// Awaits `calls` (writer calls, joined) so that they run as one batch: the
    /// writer's turn is held until every one of them has queued.
    async fn in_one_batch<F: Future>(writer: &Writer, calls: F) -> F::Output {
        let turn = writer.turn.clone().lock_owned().await;
        tokio::pin!(calls);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut calls)
                .await
                .is_err()
        );
        drop(turn);
        calls.await
    }

    fn database(name: &str) -> (PathBuf, rusqlite::Connection) {
        let dir = std::env::temp_dir().join(format!("checkout-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("db.sqlite");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, bulk BLOB)")
            .expect("schema");
        (path, conn)
    }

    fn ids(conn: &rusqlite::Connection) -> Vec<i64> {
        let mut statement = conn.prepare("SELECT id FROM t ORDER BY id").expect("prepare");
        let rows = statement.query_map([], |row| row.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    fn start(path: &std::path::Path) -> Writer {
        start_with(path, CheckpointPolicy::default())
    }

    fn start_with(path: &std::path::Path, checkpoints: CheckpointPolicy) -> Writer {
        let options = WriterOptions {
            path: path.to_path_buf(),
            busy_timeout: Duration::from_secs(2),
            checkpoints,
        };
        Writer::start(options, Arc::default())
    }

    fn file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn the_checkpoint_thread_copies_the_log_into_the_database_file() {
        let (path, conn) = database("checkpoint");
        let policy = CheckpointPolicy {
            every_frames: 50,
            restart_frames: 100_000,
        };
        let writer = start_with(&path, policy);
        let empty = file_len(&path);
        // Over a hundred pages: only the checkpoint thread copies them into the
        // database file (SQLite's own checkpoint is off on the writer's connection).
        for id in 1..=100 {
            assert!(matches!(writer.run(Bulky { id }).await, Ok(1)));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_len(&path) < empty + 50 * 4096 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was copied into the database file: {} bytes",
                file_len(&path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ids(&conn).len(), 100);
        writer.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn the_writer_starts_the_log_over_at_its_bound() {
        let (path, conn) = database("restart");
        let wal = path.with_extension("sqlite-wal");
        // No requests to the checkpoint thread: only the writer's own checkpoint.
        let policy = CheckpointPolicy {
            every_frames: i32::MAX,
            restart_frames: 400,
        };
        let writer = start_with(&path, policy);
        let mut largest = 0;
        for id in 1..=1_500 {
            assert!(matches!(writer.run(Bulky { id }).await, Ok(1)));
            largest = largest.max(file_len(&wal));
        }
        // A header, then frames of a page and their header: the bound, plus the
        // pages of the commit that reached it.
        let frame = 4096 + 24;
        let bound = (400 + 10) * frame + 32;
        assert!(
            largest <= bound,
            "the log's file reached {largest} bytes (bound {bound})"
        );
        assert_eq!(ids(&conn).len(), 1_500);
        writer.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn operations_queued_together_commit_together_and_a_failing_one_changes_nothing() {
        let (path, conn) = database("batch");
        let writer = start(&path);
        let calls: Vec<_> = (1..=20).map(|id| writer.run(Insert { id, fail: id == 7 })).collect();
        let results = in_one_batch(&writer, futures_util::future::join_all(calls)).await;
        for (id, result) in (1..=20).zip(&results) {
            match (id, result) {
                (7, Err(StoreError::Corrupt(_))) => {}
                (7, other) => panic!("operation 7 should fail, got {other:?}"),
                (_, Ok(1)) => {}
                (id, other) => panic!("operation {id} should insert its row, got {other:?}"),
            }
        }
        let expected: Vec<i64> = (1..=20).filter(|id| *id != 7).collect();
        assert_eq!(ids(&conn), expected, "all but the failed operation's row");
        // A row the failed operation had written is free again.
        assert!(matches!(writer.run(Insert { id: 7, fail: false }).await, Ok(1)));
        writer.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_batch_run_again_gives_each_operation_the_result_of_its_second_run() {
        let (path, conn) = database("again");
        let writer = start(&path);
        // The second insert of 1 fails on the first one's row; 3 ran before it and is
        // run again, and 4 runs only in the second pass.
        let calls = vec![
            writer.run(Insert { id: 3, fail: false }),
            writer.run(Insert { id: 1, fail: false }),
            writer.run(Insert { id: 1, fail: false }),
            writer.run(Insert { id: 4, fail: false }),
        ];
        let results = in_one_batch(&writer, futures_util::future::join_all(calls)).await;
        assert!(matches!(results[0], Ok(1)), "{:?}", results[0]);
        assert!(matches!(results[1], Ok(1)), "{:?}", results[1]);
        assert!(matches!(results[2], Err(StoreError::Query(_))), "{:?}", results[2]);
        assert!(matches!(results[3], Ok(1)), "{:?}", results[3]);
        assert_eq!(ids(&conn), vec![1, 3, 4]);
        writer.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_operation_that_panics_fails_alone_and_the_writer_goes_on() {
        let (path, conn) = database("panics");
        let writer = start(&path);
        let both = futures_util::future::join(writer.run(Panics { id: 1 }), writer.run(Insert { id: 2, fail: false }));
        let (panicked, inserted) = in_one_batch(&writer, both).await;
        assert!(matches!(panicked, Err(StoreError::Corrupt(_))), "{panicked:?}");
        assert!(matches!(inserted, Ok(1)), "{inserted:?}");
        assert_eq!(ids(&conn), vec![2], "the panicking operation's row is gone");
        assert!(matches!(writer.run(Insert { id: 1, fail: false }).await, Ok(1)));
        writer.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_operation_whose_caller_stopped_waiting_is_never_run() {
        let (path, conn) = database("abandoned");
        let writer = start(&path);
        let turn = writer.turn.clone().lock_owned().await;
        let first = writer.run(Insert { id: 1, fail: false });
        tokio::pin!(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut first)
                .await
                .is_err()
        );
        // Queued behind the first batch, then given up on.
        let abandoned = writer.run(Insert { id: 2, fail: false });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), abandoned)
                .await
                .is_err()
        );
        drop(turn);
        assert!(matches!(first.await, Ok(1)));
        assert!(matches!(writer.run(Insert { id: 3, fail: false }).await, Ok(1)));
        assert_eq!(ids(&conn), vec![1, 3]);
        writer.close(Duration::from_secs(5)).await;
        assert!(matches!(
            writer.run(Insert { id: 4, fail: false }).await,
            Err(StoreError::Unreachable(_))
        ));
    }
}
