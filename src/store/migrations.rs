//! The schema, embedded in the binary: migrations, the version this build expects,
//! and the version a database is at.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, Store, StoreError};

/// One version of the schema: its SQL for each backend. Versions are numbered
/// alike on both, so that one build expects one version.
struct Script {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
    /// The SQLite script runs outside the migrator's transaction, in one of its
    /// own (it must turn foreign key enforcement off first).
    sqlite_own_transaction: bool,
}

/// Every migration, in order.
const MIGRATIONS: &[Script] = &[
    Script {
        version: 1,
        description: "initial schema",
        sqlite: include_str!("../../migrations/0001_initial.sql"),
        postgres: include_str!("../../migrations/0001_initial.sql"),
        sqlite_own_transaction: false,
    },
    Script {
        version: 2,
        description: "CHECK lists as comparisons",
        sqlite: include_str!("../../migrations/0002_check_lists_as_comparisons.sqlite.sql"),
        postgres: include_str!("../../migrations/0002_check_lists_as_comparisons.postgres.sql"),
        sqlite_own_transaction: true,
    },
    Script {
        version: 3,
        description: "payments without a charge, provider references, webhook events",
        sqlite: include_str!("../../migrations/0003_payments.sqlite.sql"),
        postgres: include_str!("../../migrations/0003_payments.postgres.sql"),
        sqlite_own_transaction: true,
    },
];

/// The schema version this build needs.
pub fn expected_version() -> i64 {
    MIGRATIONS.last().map_or(0, |script| script.version)
}

fn migrator(sqlite: bool) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|script| {
                let (sql, own_transaction) = if sqlite {
                    (script.sqlite, script.sqlite_own_transaction)
                } else {
                    (script.postgres, false)
                };
                Migration::new(
                    script.version,
                    script.description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    own_transaction,
                )
            })
            .collect(),
    )
}

/// Where a database's schema stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Highest migration applied successfully (0 for an empty database).
    pub version: i64,
    /// A migration started but did not finish.
    pub dirty: bool,
}

impl Store {
    /// Applies pending migrations (under a lock on PostgreSQL, so several instances
    /// starting at once apply each migration once) and returns the new version.
    pub async fn migrate(&self) -> Result<i64, anyhow::Error> {
        self.migrate_to(expected_version()).await
    }

    /// Applies pending migrations up to version `target` and returns the new
    /// version: [`Store::migrate`], stopping early, so that an upgrade from an
    /// older schema can be tried.
    pub async fn migrate_to(&self, target: i64) -> Result<i64, anyhow::Error> {
        match &self.backend {
            Backend::Sqlite { write, .. } => {
                if let Err(error) = migrator(true).run_to(target, write).await {
                    // A script that runs in its own transaction and fails part way
                    // leaves it open, with foreign keys off: undo both on the
                    // connection before it goes back to the pool.
                    if let Ok(mut conn) = write.acquire().await {
                        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                        let _ = sqlx::raw_sql("PRAGMA foreign_keys = ON").execute(&mut *conn).await;
                    }
                    return Err(anyhow::anyhow!(super::migration_words(&error)));
                }
            }
            Backend::Postgres(pool) => migrator(false)
                .run_to(target, pool)
                .await
                .map_err(|error| anyhow::anyhow!(super::migration_words(&error)))?,
        }
        Ok(self.schema_status().await?.version)
    }

    /// Reads the applied schema version.
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let exists_sql = match &self.backend {
            Backend::Sqlite { .. } => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres(_) => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
            }
        };
        with_read!(self, |conn| {
            let exists: i64 = sqlx::query_scalar(exists_sql).fetch_one(&mut *conn).await?;
            if exists == 0 {
                return Ok(SchemaStatus {
                    version: 0,
                    dirty: false,
                });
            }
            let version: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                    .fetch_one(&mut *conn)
                    .await?;
            let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = FALSE")
                .fetch_one(&mut *conn)
                .await?;
            Ok::<_, StoreError>(SchemaStatus {
                version: version.unwrap_or(0),
                dirty: failed > 0,
            })
        })
    }
}
