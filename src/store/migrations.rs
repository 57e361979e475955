//! The schema, embedded in the binary: migrations, the version this build expects,
//! and the version a database is at.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, Store, StoreError};

/// Every migration: version, description, SQL (portable across both backends).
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "initial schema", include_str!("../../migrations/0001_initial.sql"))];

/// The schema version this build needs.
pub fn expected_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
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
        let migrator = migrator();
        match &self.backend {
            Backend::Sqlite { write, .. } => migrator.run(write).await?,
            Backend::Postgres(pool) => migrator.run(pool).await?,
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
