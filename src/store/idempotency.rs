//! Responses kept for `Idempotency-Key` replays.

use super::{RowExt, Store, StoreError};
use crate::domain::UserId;

/// What to do with a request carrying an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// First use of the key, or a retry of a request that has no final answer yet:
    /// process it.
    Proceed,
    /// The key already has a final answer for this same request: send it again.
    Replay {
        /// Status of the original response.
        status: u16,
        /// Body of the original response.
        body: String,
    },
    /// The key was used for a different request.
    Mismatch,
}

impl Store {
    /// Records the key with the request's fingerprint, or reports what it holds.
    pub async fn claim_idempotency_key(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now_ms: i64,
    ) -> Result<KeyClaim, StoreError> {
        with_write!(self, |conn| {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, created_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, idem_key) DO NOTHING",
            )
            .bind(user.as_str())
            .bind(key)
            .bind(request_hash)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(KeyClaim::Proceed);
            }
            let row = sqlx::query(
                "SELECT request_hash, response_status, response_body FROM idempotency_keys \
                 WHERE user_id = $1 AND idem_key = $2",
            )
            .bind(user.as_str())
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
            if row.text("request_hash")? != request_hash {
                return Ok(KeyClaim::Mismatch);
            }
            Ok::<_, StoreError>(
                match (row.opt_int("response_status")?, row.opt_text("response_body")?) {
                    (Some(status), Some(body)) => KeyClaim::Replay {
                        status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("status {status}")))?,
                        body,
                    },
                    _ => KeyClaim::Proceed,
                },
            )
        })
    }

    /// Keeps the final answer to a keyed request for replays.
    pub async fn save_idempotent_response(
        &self,
        user: &UserId,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query(
                "UPDATE idempotency_keys SET response_status = $3, response_body = $4 \
                 WHERE user_id = $1 AND idem_key = $2",
            )
            .bind(user.as_str())
            .bind(key)
            .bind(i64::from(status))
            .bind(body)
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Forgets keys created before `before_ms`; returns how many.
    pub async fn purge_idempotency_keys(&self, before_ms: i64) -> Result<u64, StoreError> {
        with_write!(self, |conn| {
            let purged = sqlx::query("DELETE FROM idempotency_keys WHERE created_at_ms < $1")
                .bind(before_ms)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok::<_, StoreError>(purged)
        })
    }
}
