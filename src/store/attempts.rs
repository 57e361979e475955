//! Checkout attempts: the durable steps of a checkout, and the leases that decide
//! who may act on one. Every state change is a compare-and-set on the state and the
//! lease owner, so two processes (or a request and the reconciler) can never both
//! move the same attempt.

use super::carts::{SELECT_CART, cart_from_rows};
use super::writer::{Arg, Exec, Operation};
use super::{RowExt, Store, StoreError, parse_stored};
use crate::domain::{Attempt, AttemptId, AttemptState, Cart, CartId, Currency, InventoryAction, OrderId, UserId};

macro_rules! attempt_columns {
    () => {
        "id, cart_id, user_id, state, amount_cents, currency, transaction_id, order_id, \
         inventory_pending, recheck_until_ms, retries, created_at_ms, payment_ref, action_until_ms"
    };
}

fn attempt_from_row(row: &impl RowExt) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        id: parse_stored("attempt id", &row.text("id")?, AttemptId::parse)?,
        cart_id: parse_stored("cart id", &row.text("cart_id")?, CartId::parse)?,
        user_id: parse_stored("user id", &row.text("user_id")?, UserId::parse)?,
        state: parse_stored("attempt state", &row.text("state")?, |s| {
            AttemptState::parse(s).ok_or("unknown state")
        })?,
        amount_cents: row.int("amount_cents")?,
        currency: parse_stored("currency", &row.text("currency")?, Currency::parse)?,
        transaction_id: row.opt_text("transaction_id")?,
        order_id: row
            .opt_text("order_id")?
            .map(|o| parse_stored("order id", &o, OrderId::parse))
            .transpose()?,
        inventory_pending: row
            .opt_text("inventory_pending")?
            .map(|a| {
                parse_stored("inventory action", &a, |s| {
                    InventoryAction::parse(s).ok_or("unknown action")
                })
            })
            .transpose()?,
        recheck_until_ms: row.opt_int("recheck_until_ms")?,
        payment_ref: row.opt_text("payment_ref")?,
        action_until_ms: row.opt_int("action_until_ms")?,
        retries: row.int("retries")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

/// The right to act on an attempt until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it: a process and, for requests, the request.
    pub owner: String,
    /// When it runs out (Unix milliseconds); then anyone may take it over.
    pub until_ms: i64,
}

/// The result of trying to start a checkout.
#[derive(Debug)]
// Returned once per checkout and matched at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Begin {
    /// The cart is now `CHECKING_OUT`, owned by this new attempt.
    Started(Attempt, Cart),
    /// The cart is missing, someone else's, not open, or empty; read it to learn which.
    NotStarted,
}

/// How an attempt ends without an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure<'a> {
    /// Why, for the record (`PAYMENT_DECLINED`, `INVENTORY_CONFLICT`, ...).
    pub reason: &'a str,
    /// An inventory call still owed.
    pub inventory_pending: Option<InventoryAction>,
    /// Until when to look for a charge that lands late, when the charge's outcome
    /// was never known for sure.
    pub recheck_until_ms: Option<i64>,
}

impl Store {
    /// Step 2 of a checkout: in one transaction, moves `user`'s open, non-empty cart
    /// to `CHECKING_OUT` and records a `RESERVING` attempt holding `lease`, with the
    /// amount fixed from the now-frozen lines. Returns once the record is on disk,
    /// since stock is reserved under it next.
    pub async fn begin_attempt(
        &self,
        cart_id: &CartId,
        user: &UserId,
        attempt_id: &AttemptId,
        lease: &Lease,
        now_ms: i64,
    ) -> Result<Begin, StoreError> {
        self.apply(BeginAttempt {
            cart_id: cart_id.clone(),
            user: user.clone(),
            attempt_id: attempt_id.clone(),
            lease: lease.clone(),
            now_ms,
        })
        .await
    }

    /// Takes over the unfinished attempt on `cart_id` if its lease has run out (its
    /// request ended without an answer, or its process died). `None` means another
    /// request is working on it right now.
    pub async fn claim_cart_attempt(
        &self,
        cart_id: &CartId,
        lease: &Lease,
        now_ms: i64,
    ) -> Result<Option<Attempt>, StoreError> {
        with_write!(self, |conn| {
            let row = sqlx::query(concat!(
                "UPDATE checkout_attempts SET lease_owner = $2, lease_until_ms = $3, updated_at_ms = $4 \
                 WHERE cart_id = $1 AND state IN ('RESERVING', 'CHARGING') AND lease_until_ms <= $4 \
                 RETURNING ",
                attempt_columns!()
            ))
            .bind(cart_id.as_str())
            .bind(&lease.owner)
            .bind(lease.until_ms)
            .bind(now_ms)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(attempt_from_row).transpose()
        })
    }

    /// Takes over attempt `id` if its lease has run out and it still has work.
    pub async fn claim_attempt(
        &self,
        id: &AttemptId,
        lease: &Lease,
        now_ms: i64,
    ) -> Result<Option<Attempt>, StoreError> {
        with_write!(self, |conn| {
            let row = sqlx::query(concat!(
                "UPDATE checkout_attempts SET lease_owner = $2, lease_until_ms = $3, updated_at_ms = $4 \
                 WHERE id = $1 AND lease_until_ms <= $4 \
                 AND (state IN ('RESERVING', 'CHARGING') OR inventory_pending IS NOT NULL OR recheck_until_ms IS NOT NULL) \
                 RETURNING ",
                attempt_columns!()
            ))
            .bind(id.as_str())
            .bind(&lease.owner)
            .bind(lease.until_ms)
            .bind(now_ms)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(attempt_from_row).transpose()
        })
    }

    /// Attempts with work left whose lease has run out and that nobody has touched
    /// since `untouched_since_ms`, oldest lease first.
    pub async fn due_attempts(
        &self,
        now_ms: i64,
        untouched_since_ms: i64,
        limit: i64,
    ) -> Result<Vec<AttemptId>, StoreError> {
        with_read!(self, |conn| {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM checkout_attempts WHERE lease_until_ms <= $1 AND updated_at_ms <= $2 \
                 AND (state IN ('RESERVING', 'CHARGING') OR inventory_pending IS NOT NULL OR recheck_until_ms IS NOT NULL) \
                 ORDER BY lease_until_ms LIMIT $3",
            )
            .bind(now_ms)
            .bind(untouched_since_ms)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            ids.iter()
                .map(|id| parse_stored("attempt id", id, AttemptId::parse))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Step 4: records that the charge is about to be sent. Until the gateway says
    /// otherwise, the card may have been charged from this moment on. Returns once
    /// the record is on disk.
    pub async fn mark_charging(&self, id: &AttemptId, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.apply(MarkCharging {
            id: id.clone(),
            owner: owner.to_owned(),
            now_ms,
        })
        .await
    }

    /// Records the payment provider's reference of the attempt's payment, before
    /// the payment is confirmed. Returns once it is on disk; false, changing
    /// nothing, if `owner` no longer holds a `CHARGING` attempt.
    pub async fn record_payment_ref(
        &self,
        id: &AttemptId,
        owner: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.apply(RecordPaymentRef {
            id: id.clone(),
            owner: owner.to_owned(),
            reference: reference.to_owned(),
            now_ms,
        })
        .await
    }

    /// The payment now waits for the buyer: it may until `action_until_ms`. Hands
    /// the attempt back (anyone may settle it from now on: a webhook, a retry, the
    /// reconciler).
    pub async fn await_action(
        &self,
        id: &AttemptId,
        owner: &str,
        action_until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query(
                "UPDATE checkout_attempts SET action_until_ms = $3, lease_until_ms = $4, updated_at_ms = $4 \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'CHARGING'",
            )
            .bind(id.as_str())
            .bind(owner)
            .bind(action_until_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// The attempt whose payment the provider knows as `reference`.
    pub async fn attempt_by_payment_ref(&self, reference: &str) -> Result<Option<Attempt>, StoreError> {
        with_read!(self, |conn| {
            let row = sqlx::query(concat!(
                "SELECT ",
                attempt_columns!(),
                " FROM checkout_attempts WHERE payment_ref = $1"
            ))
            .bind(reference)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(attempt_from_row).transpose()
        })
    }

    /// Records a provider's event as received; false if it was before (each event
    /// is applied once).
    pub async fn record_event(
        &self,
        id: &str,
        kind: &str,
        reference: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        with_write!(self, |conn| {
            let inserted = sqlx::query(
                "INSERT INTO webhook_events (id, type, payment_ref, received_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(kind)
            .bind(reference)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok::<_, StoreError>(inserted == 1)
        })
    }

    /// Forgets that event `id` was received, so that a delivery again applies it
    /// (its first application did not finish).
    pub async fn forget_event(&self, id: &str) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query("DELETE FROM webhook_events WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Step 5: in one transaction, creates the order from the cart's lines (paid by
    /// `transaction_id`, or by nothing for a total of 0), completes
    /// the attempt (owing the inventory a commit) and the cart. Returns false, changing
    /// nothing, if `owner` no longer holds the attempt or it is not `CHARGING`.
    pub async fn complete_attempt(
        &self,
        attempt: &Attempt,
        owner: &str,
        order_id: &OrderId,
        transaction_id: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.apply(CompleteAttempt {
            attempt: attempt.clone(),
            owner: owner.to_owned(),
            order_id: order_id.clone(),
            transaction_id: transaction_id.map(str::to_owned),
            now_ms,
        })
        .await
    }

    /// Ends an attempt without an order and opens its cart again, in one transaction.
    /// Returns false, changing nothing, if `owner` no longer holds it or it is finished.
    pub async fn fail_attempt(
        &self,
        attempt: &Attempt,
        owner: &str,
        failure: &Failure<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.apply(FailAttempt {
            attempt_id: attempt.id.clone(),
            cart_id: attempt.cart_id.clone(),
            owner: owner.to_owned(),
            reason: failure.reason.to_owned(),
            inventory_pending: failure.inventory_pending,
            recheck_until_ms: failure.recheck_until_ms,
            now_ms,
        })
        .await
    }

    /// Hands an attempt back: anyone may take it over from `until_ms` on.
    pub async fn release_lease(
        &self,
        id: &AttemptId,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query(
                "UPDATE checkout_attempts SET lease_until_ms = $3, retries = retries + 1, updated_at_ms = $4 \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id.as_str())
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Records that the inventory call `action` is done. Concurrent records are
    /// written together (see [`DoneRecords`]); returns once this one is written.
    pub async fn inventory_done(&self, id: &AttemptId, action: InventoryAction, now_ms: i64) -> Result<(), StoreError> {
        let ticket = self.done.queue(id, action);
        let _turn = self.done.turn.lock().await;
        let Some(batch) = self.done.take_unless_written(ticket) else {
            return Ok(());
        };
        match self.write_inventory_done(&batch, now_ms).await {
            Ok(()) => {
                self.done.written(&batch);
                Ok(())
            }
            Err(error) => {
                // Back in the queue: the next caller writes them with its own.
                self.done.requeue(batch);
                Err(error)
            }
        }
    }

    async fn write_inventory_done(&self, batch: &[DoneRecord], now_ms: i64) -> Result<(), StoreError> {
        let records = batch
            .iter()
            .map(|record| (record.id.as_str().to_owned(), record.action))
            .collect();
        self.apply(InventoryDone { records, now_ms }).await
    }

    /// Stops looking for a late charge on a failed attempt.
    pub async fn end_recheck(&self, id: &AttemptId, now_ms: i64) -> Result<(), StoreError> {
        with_write!(self, |conn| {
            sqlx::query("UPDATE checkout_attempts SET recheck_until_ms = NULL, updated_at_ms = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
            Ok::<_, StoreError>(())
        })
    }
}

/// See [`Store::begin_attempt`].
#[derive(Clone)]
struct BeginAttempt {
    cart_id: CartId,
    user: UserId,
    attempt_id: AttemptId,
    lease: Lease,
    now_ms: i64,
}

impl Operation for BeginAttempt {
    type Output = Begin;
    // Stock is reserved under the attempt next.
    const DURABLE: bool = true;

    async fn run<E: Exec>(self, db: &mut E) -> Result<Begin, StoreError> {
        let claimed = db
            .execute(
                "UPDATE carts SET status = 'CHECKING_OUT', updated_at_ms = $2 \
                 WHERE id = $1 AND user_id = $3 AND status = 'OPEN' \
                 AND EXISTS (SELECT 1 FROM cart_items WHERE cart_id = $1)",
                &[
                    Arg::Text(self.cart_id.as_str()),
                    Arg::Int(self.now_ms),
                    Arg::Text(self.user.as_str()),
                ],
            )
            .await?;
        if claimed == 0 {
            return Ok(Begin::NotStarted);
        }
        let rows = db.fetch(SELECT_CART, &[Arg::Text(self.cart_id.as_str())]).await?;
        let cart = cart_from_rows(&rows)?
            .ok_or_else(|| StoreError::Corrupt(format!("cart {} vanished inside its transaction", self.cart_id)))?;
        let attempt = Attempt {
            id: self.attempt_id,
            cart_id: cart.id.clone(),
            user_id: cart.user_id.clone(),
            state: AttemptState::Reserving,
            amount_cents: cart.total_cents(),
            currency: cart.currency,
            transaction_id: None,
            order_id: None,
            inventory_pending: None,
            recheck_until_ms: None,
            payment_ref: None,
            action_until_ms: None,
            retries: 0,
            created_at_ms: self.now_ms,
        };
        db.execute(
            "INSERT INTO checkout_attempts (id, cart_id, user_id, state, amount_cents, currency, \
             lease_owner, lease_until_ms, retries, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'RESERVING', $4, $5, $6, $7, 0, $8, $8)",
            &[
                Arg::Text(attempt.id.as_str()),
                Arg::Text(attempt.cart_id.as_str()),
                Arg::Text(attempt.user_id.as_str()),
                Arg::Int(attempt.amount_cents),
                Arg::Text(attempt.currency.as_str()),
                Arg::Text(&self.lease.owner),
                Arg::Int(self.lease.until_ms),
                Arg::Int(self.now_ms),
            ],
        )
        .await?;
        Ok(Begin::Started(attempt, cart))
    }
}

/// See [`Store::record_payment_ref`].
#[derive(Clone)]
struct RecordPaymentRef {
    id: AttemptId,
    owner: String,
    reference: String,
    now_ms: i64,
}

impl Operation for RecordPaymentRef {
    type Output = bool;
    // The payment is confirmed next.
    const DURABLE: bool = true;
    const SINGLE_STATEMENT: bool = true;

    async fn run<E: Exec>(self, db: &mut E) -> Result<bool, StoreError> {
        let changed = db
            .execute(
                "UPDATE checkout_attempts SET payment_ref = $3, updated_at_ms = $4 \
                 WHERE id = $1 AND state = 'CHARGING' AND lease_owner = $2",
                &[
                    Arg::Text(self.id.as_str()),
                    Arg::Text(&self.owner),
                    Arg::Text(&self.reference),
                    Arg::Int(self.now_ms),
                ],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// See [`Store::mark_charging`].
#[derive(Clone)]
struct MarkCharging {
    id: AttemptId,
    owner: String,
    now_ms: i64,
}

impl Operation for MarkCharging {
    type Output = bool;
    // The card is charged next.
    const DURABLE: bool = true;
    const SINGLE_STATEMENT: bool = true;

    async fn run<E: Exec>(self, db: &mut E) -> Result<bool, StoreError> {
        let changed = db
            .execute(
                "UPDATE checkout_attempts SET state = 'CHARGING', updated_at_ms = $3 \
                 WHERE id = $1 AND state = 'RESERVING' AND lease_owner = $2",
                &[
                    Arg::Text(self.id.as_str()),
                    Arg::Text(&self.owner),
                    Arg::Int(self.now_ms),
                ],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// See [`Store::complete_attempt`].
#[derive(Clone)]
struct CompleteAttempt {
    attempt: Attempt,
    owner: String,
    order_id: OrderId,
    /// None for an order whose total is 0: nothing was charged.
    transaction_id: Option<String>,
    now_ms: i64,
}

impl Operation for CompleteAttempt {
    type Output = bool;
    // A completion lost to a power cut is rebuilt from the durable CHARGING record.
    const DURABLE: bool = false;

    async fn run<E: Exec>(self, db: &mut E) -> Result<bool, StoreError> {
        let (attempt, cart, order) = (
            self.attempt.id.as_str(),
            self.attempt.cart_id.as_str(),
            self.order_id.as_str(),
        );
        let changed = db
            .execute(
                "UPDATE checkout_attempts SET state = 'COMPLETED', transaction_id = $3, order_id = $4, \
                 inventory_pending = 'COMMIT', updated_at_ms = $5 \
                 WHERE id = $1 AND state = 'CHARGING' AND lease_owner = $2",
                &[
                    Arg::Text(attempt),
                    Arg::Text(&self.owner),
                    Arg::OptText(self.transaction_id.as_deref()),
                    Arg::Text(order),
                    Arg::Int(self.now_ms),
                ],
            )
            .await?;
        if changed == 0 {
            return Ok(false);
        }
        db.execute(
            "INSERT INTO orders (id, user_id, cart_id, attempt_id, status, transaction_id, total_cents, \
             currency, created_at_ms) VALUES ($1, $2, $3, $4, 'CONFIRMED', $5, $6, $7, $8)",
            &[
                Arg::Text(order),
                Arg::Text(self.attempt.user_id.as_str()),
                Arg::Text(cart),
                Arg::Text(attempt),
                Arg::OptText(self.transaction_id.as_deref()),
                Arg::Int(self.attempt.amount_cents),
                Arg::Text(self.attempt.currency.as_str()),
                Arg::Int(self.now_ms),
            ],
        )
        .await?;
        db.execute(
            "INSERT INTO order_items (order_id, sku, quantity, price_cents, line_no) \
             SELECT $1, sku, quantity, price_cents, line_no FROM cart_items WHERE cart_id = $2",
            &[Arg::Text(order), Arg::Text(cart)],
        )
        .await?;
        db.execute(
            "UPDATE carts SET status = 'COMPLETED', order_id = $2, updated_at_ms = $3 \
             WHERE id = $1 AND status = 'CHECKING_OUT'",
            &[Arg::Text(cart), Arg::Text(order), Arg::Int(self.now_ms)],
        )
        .await?;
        Ok(true)
    }
}

/// See [`Store::fail_attempt`].
#[derive(Clone)]
struct FailAttempt {
    attempt_id: AttemptId,
    cart_id: CartId,
    owner: String,
    reason: String,
    inventory_pending: Option<InventoryAction>,
    recheck_until_ms: Option<i64>,
    now_ms: i64,
}

impl Operation for FailAttempt {
    type Output = bool;
    // Nothing is done on the strength of it; one lost to a crash is failed again.
    const DURABLE: bool = false;

    async fn run<E: Exec>(self, db: &mut E) -> Result<bool, StoreError> {
        let changed = db
            .execute(
                "UPDATE checkout_attempts SET state = 'FAILED', failure = $3, inventory_pending = $4, \
                 recheck_until_ms = $5, lease_until_ms = $6, updated_at_ms = $6 \
                 WHERE id = $1 AND state IN ('RESERVING', 'CHARGING') AND lease_owner = $2",
                &[
                    Arg::Text(self.attempt_id.as_str()),
                    Arg::Text(&self.owner),
                    Arg::Text(&self.reason),
                    Arg::OptText(self.inventory_pending.map(InventoryAction::as_str)),
                    Arg::OptInt(self.recheck_until_ms),
                    Arg::Int(self.now_ms),
                ],
            )
            .await?;
        if changed == 0 {
            return Ok(false);
        }
        db.execute(
            "UPDATE carts SET status = 'OPEN', updated_at_ms = $2 WHERE id = $1 AND status = 'CHECKING_OUT'",
            &[Arg::Text(self.cart_id.as_str()), Arg::Int(self.now_ms)],
        )
        .await?;
        Ok(true)
    }
}

/// See [`Store::inventory_done`].
#[derive(Clone)]
struct InventoryDone {
    records: Vec<(String, InventoryAction)>,
    now_ms: i64,
}

impl Operation for InventoryDone {
    type Output = ();
    // One lost to a crash only makes the reconciler repeat an idempotent call.
    const DURABLE: bool = false;

    async fn run<E: Exec>(self, db: &mut E) -> Result<(), StoreError> {
        for action in [InventoryAction::Commit, InventoryAction::Release] {
            let ids: Vec<&str> = self
                .records
                .iter()
                .filter(|(_, done)| *done == action)
                .map(|(id, _)| id.as_str())
                .collect();
            for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
                let placeholders: Vec<String> = (3..chunk.len() + 3).map(|n| format!("${n}")).collect();
                let sql = format!(
                    "UPDATE checkout_attempts SET inventory_pending = NULL, updated_at_ms = $1 \
                     WHERE inventory_pending = $2 AND id IN ({})",
                    placeholders.join(", ")
                );
                // Only the number of placeholders varies; every value is bound.
                let mut args = vec![Arg::Int(self.now_ms), Arg::Text(action.as_str())];
                args.extend(chunk.iter().map(|id| Arg::Text(id)));
                db.execute(&sql, &args).await?;
            }
        }
        Ok(())
    }
}

/// Most attempt IDs named in one statement (SQLite and PostgreSQL both allow far more).
const MAX_IDS_PER_STATEMENT: usize = 500;

/// One finished inventory call waiting to be written down.
pub(crate) struct DoneRecord {
    ticket: u64,
    id: AttemptId,
    action: InventoryAction,
}

/// Records of finished inventory calls, written in groups: every checkout owes one
/// after answering, and instead of a commit each, whoever gets the turn writes
/// everything queued so far, so concurrent checkouts share one write. A record that
/// is never written (the process stops first) only makes the reconciler repeat the
/// call, which is idempotent.
#[derive(Default)]
pub(crate) struct DoneRecords {
    queue: std::sync::Mutex<DoneQueue>,
    /// One group write at a time; callers queue here and most find theirs written.
    turn: tokio::sync::Mutex<()>,
}

/// Every ticket up to `written` is written; every other ticket is in `pending`.
#[derive(Default)]
struct DoneQueue {
    issued: u64,
    written: u64,
    pending: Vec<DoneRecord>,
}

impl DoneRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, DoneQueue> {
        // The queue is plain data, valid after any panic.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self, id: &AttemptId, action: InventoryAction) -> u64 {
        let mut queue = self.lock();
        queue.issued += 1;
        let ticket = queue.issued;
        queue.pending.push(DoneRecord {
            ticket,
            id: id.clone(),
            action,
        });
        ticket
    }

    /// Everything queued, unless `ticket` was written by an earlier group.
    fn take_unless_written(&self, ticket: u64) -> Option<Vec<DoneRecord>> {
        let mut queue = self.lock();
        (queue.written < ticket).then(|| std::mem::take(&mut queue.pending))
    }

    fn written(&self, batch: &[DoneRecord]) {
        let mut queue = self.lock();
        let last = batch.iter().map(|record| record.ticket).max().unwrap_or(0);
        queue.written = queue.written.max(last);
    }

    fn requeue(&self, batch: Vec<DoneRecord>) {
        self.lock().pending.extend(batch);
    }
}
