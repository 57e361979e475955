//! The checkout, step by step. Each step is recorded before it is taken, so that
//! whatever fails (a dependency, the database, the process itself) leaves an attempt
//! that a retry or the reconciler can finish or undo, and never a second charge:
//!
//! 1. fail fast while either dependency's circuit is open;
//! 2. record a `RESERVING` attempt and mark the cart `CHECKING_OUT` together, so a
//!    concurrent checkout of the same cart gets 409 (a cart that cannot be claimed
//!    is read to learn why: missing, someone else's, empty, completed, or in progress);
//! 3. reserve stock under the attempt's ID;
//! 4. record `CHARGING`, then charge with the attempt's ID as idempotency key;
//! 5. create the order and complete attempt and cart together, then commit the stock.
//!
//! A charge whose outcome is unknown leaves the attempt `CHARGING`: the client gets
//! 503, and its retry resumes the same attempt with the same idempotency key.

use std::sync::Arc;

use anyhow::Context as _;
use tracing::instrument::WithSubscriber as _;

use crate::app::App;
use crate::clock::now_ms;
use crate::domain::{Attempt, AttemptState, Cart, CartId, CartStatus, InventoryAction, Money, OrderId, UserId};
use crate::error::ApiError;
use crate::http::api::PaymentToken;
use crate::store::attempts::{Begin, Failure, Lease};
use crate::telemetry;
use crate::upstream::inventory::Reservation;
use crate::upstream::payment::{Charge, ChargeResult};

/// What a successful checkout produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The order.
    pub order_id: OrderId,
    /// The gateway's charge.
    pub transaction_id: String,
    /// Amount charged.
    pub total_cents: i64,
    /// Currency charged.
    pub currency: String,
}

/// How a checkout succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completed {
    /// This request created the order (201).
    Created(Receipt),
    /// The cart already had an order; nothing was charged (200).
    AlreadyCompleted(Receipt),
}

/// Everything a checkout needs from the request.
pub struct Command<'a> {
    /// The cart.
    pub cart_id: &'a CartId,
    /// The buyer (already checked against the token).
    pub user: &'a UserId,
    /// The card.
    pub token: &'a PaymentToken,
}

/// Step 1: with a circuit open the order cannot be completed; say so before any work.
pub fn check_circuits(app: &App) -> Result<(), ApiError> {
    app.inventory.upstream().check()?;
    app.payment.upstream().check()?;
    Ok(())
}

/// Runs a checkout to its end, or to the first answer the client must hear.
///
/// The common case, a first checkout of an open cart, goes straight to step 2: the
/// claim itself checks that the cart is the user's, open and not empty, and reads
/// its lines. Only when it claims nothing is the cart read to learn why.
pub async fn complete(app: &Arc<App>, command: &Command<'_>) -> Result<Completed, ApiError> {
    check_circuits(app)?;
    let lease = request_lease(app);
    // A cart that another request reopens between our claim and our read is tried
    // again; a cart that keeps changing under us is a concurrent checkout.
    for _ in 0..2 {
        // 2. One transaction: the attempt exists exactly when the cart is CHECKING_OUT.
        let attempt_id = crate::domain::AttemptId::generate();
        let begun = app
            .store
            .begin_attempt(command.cart_id, command.user, &attempt_id, &lease, now_ms())
            .await
            .context("failed to record the checkout attempt")
            .map_err(store_error)?;
        if let Begin::Started(attempt, cart) = begun {
            return run(app, attempt, &cart, command.token, &lease.owner).await;
        }
        let cart = load_owned_cart(app, command).await?;
        match cart.status {
            CartStatus::Completed => return replay(app, &cart).await.map(Completed::AlreadyCompleted),
            CartStatus::CheckingOut => return resume(app, command, &cart, &lease).await,
            CartStatus::Open if cart.items.is_empty() => return Err(ApiError::CartEmpty),
            CartStatus::Open => {}
        }
    }
    Err(ApiError::CheckoutInProgress)
}

/// Maps a store error wrapped in context back to the right status.
fn store_error(error: anyhow::Error) -> ApiError {
    match error.downcast_ref::<crate::store::StoreError>() {
        Some(store) if store.is_unavailable() => ApiError::unavailable(
            crate::error::Dependency::Database,
            crate::error::SHORT_BACKOFF,
            store.class(),
            error,
        ),
        Some(store) => ApiError::internal(store.class(), error),
        None => ApiError::internal("InternalError", error),
    }
}

async fn load_owned_cart(app: &App, command: &Command<'_>) -> Result<Cart, ApiError> {
    let cart = app
        .store
        .cart(command.cart_id)
        .await
        .context("failed to load the cart")
        .map_err(store_error)?
        .ok_or(ApiError::CartNotFound)?;
    if &cart.user_id != command.user {
        return Err(ApiError::Forbidden);
    }
    Ok(cart)
}

/// A lease for this request: it cannot outlive the request's own timeout, so once it
/// runs out the request is certainly gone and someone else may take over.
fn request_lease(app: &App) -> Lease {
    let margin = std::time::Duration::from_secs(1);
    Lease {
        owner: format!("{}/{}", app.instance, crate::domain::ids::random_id("req_")),
        until_ms: now_ms() + i64::try_from((app.settings.request_timeout + margin).as_millis()).unwrap_or(i64::MAX),
    }
}

/// The cart is `CHECKING_OUT`: take over its attempt if nobody is working on it.
async fn resume(app: &Arc<App>, command: &Command<'_>, cart: &Cart, lease: &Lease) -> Result<Completed, ApiError> {
    let claimed = app
        .store
        .claim_cart_attempt(&cart.id, lease, now_ms())
        .await
        .context("failed to take over the unfinished checkout attempt")
        .map_err(store_error)?;
    match claimed {
        Some(attempt) => {
            tracing::info!(
                event = "checkout_resumed",
                attemptId = attempt.id.as_str(),
                state = attempt.state.as_str(),
                "resuming an unfinished checkout attempt"
            );
            run(app, attempt, cart, command.token, &lease.owner).await
        }
        None => Err(ApiError::CheckoutInProgress),
    }
}

/// Steps 3 to 5 for an attempt this request holds.
async fn run(
    app: &Arc<App>,
    mut attempt: Attempt,
    cart: &Cart,
    token: &PaymentToken,
    owner: &str,
) -> Result<Completed, ApiError> {
    telemetry::record_request_field("attemptId", attempt.id.as_str());
    // Only a charge call made by this request can be known not to have charged: a
    // resumed CHARGING attempt may carry an earlier call whose outcome is unknown.
    let first_charge = attempt.state == AttemptState::Reserving;
    if attempt.state == AttemptState::Reserving {
        // 3. Reserve stock under the attempt's ID (idempotent, so a resumed attempt
        //    cannot reserve twice).
        match app.inventory.reserve(&attempt.id, &cart.items).await {
            Ok(Reservation::Held) => {}
            Ok(Reservation::Conflict { unavailable_skus }) => {
                abandon(app, &attempt, owner, "INVENTORY_CONFLICT", true).await?;
                return Err(ApiError::InventoryConflict(unavailable_skus));
            }
            Err(error) => {
                abandon(app, &attempt, owner, "INVENTORY_UNAVAILABLE", !error.was_not_sent()).await?;
                return Err(upstream_error(error, "failed to reserve inventory"));
            }
        }
        // 4. From here on the card may be charged: write that down first.
        let marked = app
            .store
            .mark_charging(&attempt.id, owner, now_ms())
            .await
            .context("failed to record that the charge is starting")
            .map_err(store_error)?;
        if !marked {
            return Err(ApiError::CheckoutInProgress);
        }
        attempt.state = AttemptState::Charging;
    }
    let amount = Money {
        cents: attempt.amount_cents,
        currency: attempt.currency,
    };
    match app.payment.charge(&attempt.id, amount, token.expose()).await {
        Ok(ChargeResult::Succeeded(charge)) => finish(app, &attempt, owner, &charge).await.map(Completed::Created),
        Ok(ChargeResult::Declined { decline_code }) => {
            abandon(app, &attempt, owner, "PAYMENT_DECLINED", true).await?;
            Err(ApiError::PaymentDeclined(decline_code))
        }
        Err(error) if first_charge && error.was_not_sent() => {
            // Never charged: this was the attempt's first charge call and it never
            // left (no connection, or the circuit is open). Undo.
            abandon(app, &attempt, owner, "PAYMENT_UNAVAILABLE", true).await?;
            Err(upstream_error(error, "failed to charge the card"))
        }
        Err(error) => {
            // The charge may or may not have happened (now or in an earlier call).
            // Keep the attempt CHARGING and hand it back: a retry resumes it with the
            // same idempotency key, or the reconciler asks the gateway.
            if let Err(release) = app.store.release_lease(&attempt.id, owner, now_ms(), now_ms()).await {
                tracing::warn!(
                    event = "lease_release_failed",
                    attemptId = attempt.id.as_str(),
                    error = %release,
                    "could not hand the attempt back; it is taken over when its lease runs out"
                );
            }
            Err(upstream_error(
                error,
                "failed to charge the card; the outcome is unknown",
            ))
        }
    }
}

fn upstream_error(error: crate::upstream::UpstreamError, context: &'static str) -> ApiError {
    let unavailable = error.is_unavailable();
    let dependency = error.dependency;
    let retry_after = error.retry_after();
    let class = error.class();
    let cause = anyhow::Error::new(error).context(context);
    if unavailable {
        ApiError::unavailable(dependency, retry_after, class, cause)
    } else {
        ApiError::internal(class, cause)
    }
}

/// Step 5: record the order, then commit the stock (retried later if that fails).
async fn finish(app: &Arc<App>, attempt: &Attempt, owner: &str, charge: &Charge) -> Result<Receipt, ApiError> {
    let order_id = OrderId::for_attempt(&attempt.id);
    let completed = app
        .store
        .complete_attempt(attempt, owner, &order_id, &charge.id, now_ms())
        .await
        .context("failed to record the order after a successful charge")
        .map_err(store_error)?;
    if !completed {
        // The reconciler took this attempt over (this request outlived its lease);
        // the order it made is the one to report.
        let cart = app
            .store
            .cart(&attempt.cart_id)
            .await
            .context("failed to reload the cart")
            .map_err(store_error)?
            .ok_or(ApiError::CartNotFound)?;
        return match cart.status {
            CartStatus::Completed => replay(app, &cart).await,
            _ => Err(ApiError::CheckoutInProgress),
        };
    }
    telemetry::record_request_field("orderId", order_id.as_str());
    tracing::info!(
        event = "order_confirmed",
        attemptId = attempt.id.as_str(),
        transactionId = charge.id.as_str(),
        totalCents = attempt.amount_cents,
        "order confirmed"
    );
    // The order stands whatever the inventory says now: commit the stock after
    // answering. The commit is owed in the attempt: the reconciler makes it if this
    // one fails, or if too many are in progress to start it now.
    if let Ok(turn) = app.settling.clone().try_acquire_owned() {
        let (app_handle, owed) = (app.clone(), attempt.clone());
        tokio::spawn(
            async move {
                settle_inventory(&app_handle, &owed, InventoryAction::Commit).await;
                drop(turn);
            }
            .with_current_subscriber(),
        );
    }
    Ok(Receipt {
        order_id,
        transaction_id: charge.id.clone(),
        total_cents: attempt.amount_cents,
        currency: attempt.currency.to_string(),
    })
}

/// Performs an inventory call the attempt owes and records it done; on failure it
/// stays owed and the reconciler retries it. Returns whether it is done.
pub async fn settle_inventory(app: &App, attempt: &Attempt, action: InventoryAction) -> bool {
    let result = match action {
        InventoryAction::Commit => app.inventory.commit(&attempt.id).await,
        InventoryAction::Release => app.inventory.release(&attempt.id).await,
    };
    match result {
        Ok(()) => match app.store.inventory_done(&attempt.id, action, now_ms()).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    event = "inventory_settle_deferred",
                    attemptId = attempt.id.as_str(),
                    action = action.as_str(),
                    error = %error,
                    "inventory call done but not recorded; it will be repeated (it is idempotent)"
                );
                false
            }
        },
        Err(error) => {
            tracing::warn!(
                event = "inventory_settle_deferred",
                attemptId = attempt.id.as_str(),
                action = action.as_str(),
                error = %error,
                "inventory call failed; the reconciler will retry it"
            );
            false
        }
    }
}

/// Ends an attempt without an order: gives the stock back if any may be held, then
/// fails the attempt and reopens the cart. Returns false if `owner` no longer held it.
pub async fn give_back(
    app: &App,
    attempt: &Attempt,
    owner: &str,
    reason: &str,
    release_stock: bool,
    recheck_until_ms: Option<i64>,
) -> Result<bool, crate::store::StoreError> {
    let pending = if release_stock {
        match app.inventory.release(&attempt.id).await {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(
                    event = "inventory_settle_deferred",
                    attemptId = attempt.id.as_str(),
                    action = "RELEASE",
                    error = %error,
                    "could not release the reservation; the reconciler will retry it"
                );
                Some(InventoryAction::Release)
            }
        }
    } else {
        None
    };
    let failure = Failure {
        reason,
        inventory_pending: pending,
        recheck_until_ms,
    };
    app.store.fail_attempt(attempt, owner, &failure, now_ms()).await
}

async fn abandon(app: &App, attempt: &Attempt, owner: &str, reason: &str, release: bool) -> Result<(), ApiError> {
    give_back(app, attempt, owner, reason, release, None)
        .await
        .context("failed to record the end of the checkout attempt")
        .map_err(store_error)?;
    Ok(())
}

/// The order of a completed cart: a repeated checkout answers with it, charging nothing.
async fn replay(app: &App, cart: &Cart) -> Result<Receipt, ApiError> {
    let order_id = cart.order_id.as_ref().ok_or_else(|| {
        ApiError::internal(
            "InconsistentCart",
            anyhow::anyhow!("completed cart {} has no order", cart.id),
        )
    })?;
    let order = app
        .store
        .order(order_id)
        .await
        .context("failed to load the order of a completed cart")
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::internal(
                "InconsistentCart",
                anyhow::anyhow!("completed cart {} names missing order {order_id}", cart.id),
            )
        })?;
    telemetry::record_request_field("orderId", order.id.as_str());
    Ok(Receipt {
        order_id: order.id,
        transaction_id: order.transaction_id,
        total_cents: order.total_cents,
        currency: order.currency.to_string(),
    })
}
