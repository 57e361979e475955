//! The store's guarantees, run against both databases: the compare-and-set steps
//! that keep two actors from moving one checkout attempt.

use checkout_service::catalog::Catalog;
use checkout_service::clock::Clock;

fn now_ms() -> i64 {
    Clock::system().now_ms()
}
use checkout_service::config::{DatabaseUrl, DbSettings};
use checkout_service::domain::{
    AttemptId, AttemptState, Cart, CartId, CartStatus, Currency, InventoryAction, Quantity, UserId,
};
use checkout_service::store::Store;
use checkout_service::store::attempts::{Begin, Failure, Lease};
use checkout_service::store::idempotency::KeyClaim;
use checkout_service::store::migrations::expected_version;
use std::time::Duration;

use crate::helpers::*;
use crate::on_both_backends;

async fn store(db: &TestDb) -> Store {
    let settings = DbSettings {
        url: DatabaseUrl::parse(&db.url).expect("url"),
        pool_max: 4,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
    };
    Store::connect_lazy(&settings).expect("store")
}

async fn migrated(db: &TestDb) -> Store {
    let store = store(db).await;
    store.migrate().await.expect("migrate");
    store
        .upsert_products(&Catalog::demo().products, now_ms())
        .await
        .expect("catalog");
    store
}

fn buyer() -> UserId {
    UserId::parse("usr_1").expect("user")
}

async fn cart_with_a_mug(store: &Store, user: &str) -> CartId {
    let cart = Cart {
        id: CartId::generate(),
        user_id: UserId::parse(user).expect("user"),
        status: CartStatus::Open,
        currency: Currency::USD,
        items: vec![],
        order_id: None,
    };
    store.create_cart(&cart, now_ms()).await.expect("create");
    let mug = Catalog::demo()
        .products
        .into_iter()
        .find(|p| p.sku.as_str() == "SKU-MUG")
        .expect("mug");
    store
        .add_item(&cart.id, &mug, Quantity::new(2).expect("qty"), now_ms())
        .await
        .expect("add");
    cart.id
}

fn lease(owner: &str, seconds: i64) -> Lease {
    Lease {
        owner: owner.to_string(),
        until_ms: now_ms() + seconds * 1000,
    }
}

on_both_backends!(
    async fn the_schema_version_is_zero_before_migrating_and_current_after(backend) {
        let db = TestDb::new(backend).await;
        let store = store(&db).await;
        let before = store.schema_status().await.expect("status");
        assert_eq!((before.version, before.dirty), (0, false));
        assert_eq!(store.migrate().await.expect("migrate"), expected_version());
        assert_eq!(store.schema_status().await.expect("status").version, expected_version());
    }
);

on_both_backends!(
    async fn only_one_of_two_concurrent_begins_wins_and_the_amount_is_fixed(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let cart = cart_with_a_mug(&store, "usr_1").await;
        let (first, second) = (AttemptId::generate(), AttemptId::generate());
        let (lease_a, lease_b) = (lease("a", 30), lease("b", 30));
        let user = buyer();
        let (a, b) = tokio::join!(
            store.begin_attempt(&cart, &user, &first, &lease_a, now_ms()),
            store.begin_attempt(&cart, &user, &second, &lease_b, now_ms())
        );
        let started: Vec<_> = [a.expect("a"), b.expect("b")]
            .into_iter()
            .filter_map(|begin| match begin {
                Begin::Started(attempt, cart) => Some((attempt, cart)),
                Begin::NotStarted => None,
            })
            .collect();
        assert_eq!(started.len(), 1);
        let (attempt, frozen) = &started[0];
        assert_eq!(attempt.state, AttemptState::Reserving);
        assert_eq!(attempt.amount_cents, 2 * 1200);
        assert_eq!(frozen.status, CartStatus::CheckingOut);
        let mug = Catalog::demo().products.into_iter().find(|p| p.sku.as_str() == "SKU-MUG").expect("mug");
        let refused = store.add_item(&cart, &mug, Quantity::new(1).expect("qty"), now_ms()).await;
        assert!(refused.is_err(), "items are frozen while checking out");
    }
);

on_both_backends!(
    async fn nobody_but_its_owner_begins_a_checkout_of_a_cart(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let cart = cart_with_a_mug(&store, "usr_1").await;
        let stranger = UserId::parse("usr_2").expect("user");
        let other = store.begin_attempt(&cart, &stranger, &AttemptId::generate(), &lease("a", 30), now_ms()).await;
        assert!(matches!(other.expect("begin"), Begin::NotStarted));
        assert_eq!(store.cart(&cart).await.expect("cart").expect("exists").status, CartStatus::Open);
        assert!(store.due_attempts(now_ms() + 60_000, now_ms(), 10).await.expect("due").is_empty());
        let own = store.begin_attempt(&cart, &buyer(), &AttemptId::generate(), &lease("b", 30), now_ms()).await;
        assert!(matches!(own.expect("begin"), Begin::Started(..)));
    }
);

on_both_backends!(
    async fn a_lease_keeps_others_out_until_it_runs_out(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let cart = cart_with_a_mug(&store, "usr_1").await;
        let id = AttemptId::generate();
        let held = Lease { owner: "first".into(), until_ms: now_ms() + 300 };
        assert!(matches!(store.begin_attempt(&cart, &buyer(), &id, &held, now_ms()).await.expect("begin"), Begin::Started(..)));
        assert!(store.claim_cart_attempt(&cart, &lease("second", 30), now_ms()).await.expect("claim").is_none());
        assert!(store.due_attempts(now_ms(), now_ms(), 10).await.expect("due").is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(store.due_attempts(now_ms(), now_ms(), 10).await.expect("due"), vec![id.clone()]);
        let taken = store.claim_cart_attempt(&cart, &lease("second", 30), now_ms()).await.expect("claim");
        assert_eq!(taken.map(|a| a.id), Some(id.clone()));
        assert!(!store.mark_charging(&id, "first", now_ms()).await.expect("mark"), "the old owner lost it");
        assert!(store.mark_charging(&id, "second", now_ms()).await.expect("mark"));
        assert!(store.claim_attempt(&id, &lease("third", 30), now_ms()).await.expect("claim").is_none());
    }
);

on_both_backends!(
    async fn finishing_an_attempt_needs_its_lease_and_happens_once(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let cart = cart_with_a_mug(&store, "usr_1").await;
        let id = AttemptId::generate();
        let Begin::Started(attempt, _) = store.begin_attempt(&cart, &buyer(), &id, &lease("me", 30), now_ms()).await.expect("begin") else {
            panic!("not started");
        };
        assert!(store.mark_charging(&id, "me", now_ms()).await.expect("mark"));
        let order = checkout_service::domain::OrderId::generate();
        assert!(!store.complete_attempt(&attempt, "someone", &order, Some("txn_1"), now_ms()).await.expect("complete"));
        assert!(store.order(&order).await.expect("order").is_none());
        let failure = Failure { reason: "TEST", inventory_pending: None, recheck_until_ms: None };
        assert!(!store.fail_attempt(&attempt, "someone", &failure, now_ms()).await.expect("fail"));
        assert!(store.complete_attempt(&attempt, "me", &order, Some("txn_1"), now_ms()).await.expect("complete"));
        assert!(!store.complete_attempt(&attempt, "me", &order, Some("txn_1"), now_ms()).await.expect("complete"), "once");
        assert!(!store.fail_attempt(&attempt, "me", &failure, now_ms()).await.expect("fail"), "finished is final");
        let order = store.order(&order).await.expect("order").expect("exists");
        assert_eq!((order.total_cents, order.items.len()), (2400, 1));
        let cart = store.cart(&cart).await.expect("cart").expect("exists");
        assert_eq!((cart.status, cart.order_id), (CartStatus::Completed, Some(order.id)));
    }
);

on_both_backends!(
    async fn a_failed_attempt_reopens_its_cart_for_a_new_one(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let cart = cart_with_a_mug(&store, "usr_1").await;
        let id = AttemptId::generate();
        let Begin::Started(attempt, _) = store.begin_attempt(&cart, &buyer(), &id, &lease("me", 30), now_ms()).await.expect("begin") else {
            panic!("not started");
        };
        let failure = Failure { reason: "PAYMENT_DECLINED", inventory_pending: None, recheck_until_ms: None };
        assert!(store.fail_attempt(&attempt, "me", &failure, now_ms()).await.expect("fail"));
        assert_eq!(store.cart(&cart).await.expect("cart").expect("exists").status, CartStatus::Open);
        let again = store.begin_attempt(&cart, &buyer(), &AttemptId::generate(), &lease("me", 30), now_ms()).await.expect("begin");
        assert!(matches!(again, Begin::Started(..)));
    }
);

on_both_backends!(
    async fn inventory_calls_recorded_at_once_are_all_written(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let mut owed = Vec::new();
        for n in 0..24 {
            let cart = cart_with_a_mug(&store, "usr_1").await;
            let id = AttemptId::generate();
            let Begin::Started(attempt, _) = store.begin_attempt(&cart, &buyer(), &id, &lease("me", 0), now_ms()).await.expect("begin") else {
                panic!("not started");
            };
            let action = if n % 3 == 0 {
                let failure = Failure { reason: "TEST", inventory_pending: Some(InventoryAction::Release), recheck_until_ms: None };
                assert!(store.fail_attempt(&attempt, "me", &failure, now_ms()).await.expect("fail"));
                InventoryAction::Release
            } else {
                assert!(store.mark_charging(&id, "me", now_ms()).await.expect("mark"));
                let order = checkout_service::domain::OrderId::for_attempt(&id);
                assert!(store.complete_attempt(&attempt, "me", &order, Some(&format!("txn_{n}")), now_ms()).await.expect("complete"));
                InventoryAction::Commit
            };
            owed.push((id, action));
        }
        let later = now_ms() + 60_000;
        assert_eq!(store.due_attempts(later, later, 100).await.expect("due").len(), owed.len());
        // The wrong call settles nothing.
        let (first, first_action) = &owed[1];
        assert_eq!(*first_action, InventoryAction::Commit);
        store.inventory_done(first, InventoryAction::Release, now_ms()).await.expect("done");
        assert!(store.due_attempts(later, later, 100).await.expect("due").contains(first));
        let written = futures_util::future::join_all(
            owed.iter().map(|(id, action)| store.inventory_done(id, *action, now_ms())),
        )
        .await;
        assert!(written.iter().all(Result::is_ok), "{written:?}");
        assert_eq!(store.due_attempts(later, later, 100).await.expect("due"), Vec::<AttemptId>::new());
    }
);

on_both_backends!(
    async fn idempotency_keys_proceed_replay_or_refuse(backend) {
        let db = TestDb::new(backend).await;
        let store = migrated(&db).await;
        let user = UserId::parse("usr_1").expect("user");
        let other = UserId::parse("usr_2").expect("user");
        assert_eq!(store.claim_idempotency_key(&user, "k", "h1", now_ms()).await.expect("claim"), KeyClaim::Proceed);
        assert_eq!(store.claim_idempotency_key(&user, "k", "h1", now_ms()).await.expect("claim"), KeyClaim::Proceed);
        assert_eq!(store.claim_idempotency_key(&user, "k", "h2", now_ms()).await.expect("claim"), KeyClaim::Mismatch);
        assert_eq!(store.claim_idempotency_key(&other, "k", "h2", now_ms()).await.expect("claim"), KeyClaim::Proceed, "keys are per user");
        store.save_idempotent_response(&user, "k", 201, "{\"ok\":true}").await.expect("save");
        assert_eq!(
            store.claim_idempotency_key(&user, "k", "h1", now_ms()).await.expect("claim"),
            KeyClaim::Replay { status: 201, body: "{\"ok\":true}".into() }
        );
        assert_eq!(store.purge_idempotency_keys(now_ms() + 1).await.expect("purge"), 2);
    }
);

/// Every row of the tables a checkout writes, one text per row, in a stable order.
const TABLE_DUMPS: &[&str] = &[
    "SELECT id || '|' || user_id || '|' || status || '|' || currency || '|' || COALESCE(order_id, '-') || '|' \
     || CAST(created_at_ms AS TEXT) || '|' || CAST(updated_at_ms AS TEXT) FROM carts ORDER BY id",
    "SELECT cart_id || '|' || sku || '|' || CAST(quantity AS TEXT) || '|' || CAST(price_cents AS TEXT) || '|' \
     || CAST(line_no AS TEXT) FROM cart_items ORDER BY cart_id, sku",
    "SELECT id || '|' || cart_id || '|' || user_id || '|' || state || '|' || CAST(amount_cents AS TEXT) || '|' \
     || currency || '|' || COALESCE(transaction_id, '-') || '|' || COALESCE(order_id, '-') || '|' \
     || COALESCE(failure, '-') || '|' || COALESCE(inventory_pending, '-') || '|' \
     || COALESCE(CAST(recheck_until_ms AS TEXT), '-') || '|' || COALESCE(lease_owner, '-') || '|' \
     || CAST(lease_until_ms AS TEXT) || '|' || CAST(retries AS TEXT) || '|' || CAST(created_at_ms AS TEXT) || '|' \
     || CAST(updated_at_ms AS TEXT) FROM checkout_attempts ORDER BY id",
    "SELECT id || '|' || cart_id || '|' || attempt_id || '|' || status || '|' || transaction_id || '|' \
     || CAST(total_cents AS TEXT) FROM orders ORDER BY id",
    "SELECT order_id || '|' || sku || '|' || CAST(quantity AS TEXT) FROM order_items ORDER BY order_id, sku",
];

/// A connection of the test's own to `db`, for SQL the store does not offer.
enum Raw {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Raw {
    async fn connect(db: &TestDb) -> Raw {
        use sqlx::Connection as _;
        match db.backend {
            // sqlx turns foreign key enforcement on, as the service's connections do.
            Backend::Sqlite => Raw::Sqlite(sqlx::SqliteConnection::connect(&db.url).await.expect("connect")),
            Backend::Postgres => Raw::Postgres(sqlx::PgConnection::connect(&db.url).await.expect("connect")),
        }
    }

    async fn texts(&mut self, sql: &str) -> Vec<String> {
        let query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_string()));
        match self {
            Raw::Sqlite(conn) => query.fetch_all(conn).await,
            Raw::Postgres(conn) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_all(conn)
                    .await
            }
        }
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    async fn execute(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Raw::Sqlite(conn) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(conn)
                .await
                .map(|r| r.rows_affected()),
            Raw::Postgres(conn) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(conn)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    async fn dump(&mut self) -> Vec<Vec<String>> {
        let mut tables = Vec::new();
        for sql in TABLE_DUMPS {
            tables.push(self.texts(sql).await);
        }
        tables
    }
}

/// Whether SQLite builds a temporary B-tree to run `sql` (an `OpenEphemeral` in its program).
async fn builds_a_temporary_btree(raw: &mut Raw, sql: &str) -> bool {
    use sqlx::Row as _;
    let Raw::Sqlite(conn) = raw else {
        unreachable!("EXPLAIN programs are SQLite's")
    };
    // Prepared afresh each time: an EXPLAIN does not run, so a cached one would
    // never notice that the schema changed.
    let program = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .persistent(false)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|error| panic!("EXPLAIN {sql}: {error}"));
    program
        .iter()
        .any(|op| op.get::<String, _>("opcode") == "OpenEphemeral")
}

/// The writes of a checkout that the status and state constraints check.
const CHECKED_WRITES: &[&str] = &[
    "UPDATE carts SET status = 'CHECKING_OUT', updated_at_ms = 1 WHERE id = 'cart_x'",
    "INSERT INTO checkout_attempts (id, cart_id, user_id, state, amount_cents, currency, lease_until_ms, \
     created_at_ms, updated_at_ms) VALUES ('att_x', 'cart_x', 'usr_1', 'RESERVING', 1, 'USD', 0, 0, 0)",
    "UPDATE checkout_attempts SET state = 'CHARGING' WHERE id = 'att_x'",
];

on_both_backends!(
    async fn an_upgrade_from_version_one_keeps_every_row_and_every_rule(backend) {
        let db = TestDb::new(backend).await;
        let store = store(&db).await;
        assert_eq!(store.migrate_to(1).await.expect("migrate to 1"), 1);
        store.upsert_products(&Catalog::demo().products, now_ms()).await.expect("catalog");
        // Carts in each state a live database holds: open, checking out, completed,
        // and open again after a failed attempt that still owes the inventory a release.
        let open = cart_with_a_mug(&store, "usr_1").await;
        let (checking_out, completed, failed) = (
            cart_with_a_mug(&store, "usr_1").await,
            cart_with_a_mug(&store, "usr_1").await,
            cart_with_a_mug(&store, "usr_1").await,
        );
        let mut attempts = Vec::new();
        for cart in [&checking_out, &completed, &failed] {
            let id = AttemptId::generate();
            let Begin::Started(attempt, _) =
                store.begin_attempt(cart, &buyer(), &id, &lease("me", 30), now_ms()).await.expect("begin")
            else {
                panic!("not started");
            };
            attempts.push(attempt);
        }
        assert!(store.mark_charging(&attempts[1].id, "me", now_ms()).await.expect("mark"));
        let order = checkout_service::domain::OrderId::generate();
        assert!(store.complete_attempt(&attempts[1], "me", &order, Some("txn_1"), now_ms()).await.expect("complete"));
        let failure = Failure {
            reason: "PAYMENT_DECLINED",
            inventory_pending: Some(InventoryAction::Release),
            recheck_until_ms: Some(now_ms() + 60_000),
        };
        assert!(store.fail_attempt(&attempts[2], "me", &failure, now_ms()).await.expect("fail"));

        let mut raw = Raw::connect(&db).await;
        let before = raw.dump().await;
        assert_eq!(before.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 3, 1, 1], "{before:?}");
        let sqlite = backend == Backend::Sqlite;
        if sqlite {
            for sql in CHECKED_WRITES {
                assert!(builds_a_temporary_btree(&mut raw, sql).await, "version 1 checks {sql} with an IN list");
            }
        }

        assert_eq!(store.migrate().await.expect("migrate"), expected_version());
        assert_eq!(store.migrate().await.expect("again"), expected_version(), "nothing left to apply");
        assert_eq!(raw.dump().await, before, "every row as it was");
        if sqlite {
            // Stopped between its commit and the migrator's record of it, the
            // rebuild runs again on the next start, and changes nothing more.
            raw.execute("DELETE FROM _sqlx_migrations WHERE version = 2").await.expect("forget");
            assert_eq!(store.migrate().await.expect("rerun"), expected_version());
            assert_eq!(raw.dump().await, before, "every row as it was, again");
        }
        if sqlite {
            for sql in CHECKED_WRITES {
                assert!(!builds_a_temporary_btree(&mut raw, sql).await, "{sql}");
            }
            assert_eq!(raw.texts("SELECT CAST(COUNT(*) AS TEXT) FROM pragma_foreign_key_check").await, ["0"]);
            assert_eq!(raw.texts("PRAGMA integrity_check").await, ["ok"]);
            let indexes = raw.texts("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name").await;
            assert_eq!(
                indexes,
                ["carts_by_status", "checkout_attempts_one_active_per_cart", "checkout_attempts_open_work", "idempotency_keys_by_age"]
            );
        }

        // The rules hold as before: only the statuses and states the constraints
        // name, one active attempt per cart, and no line without its cart.
        for bad in [
            format!("UPDATE carts SET status = 'LOST' WHERE id = '{open}'"),
            format!("UPDATE checkout_attempts SET state = 'LOST' WHERE id = '{}'", attempts[0].id),
            format!(
                "INSERT INTO checkout_attempts (id, cart_id, user_id, state, amount_cents, currency, lease_until_ms, \
                 created_at_ms, updated_at_ms) VALUES ('att_second', '{checking_out}', 'usr_1', 'CHARGING', 1, 'USD', 0, 0, 0)"
            ),
            "INSERT INTO cart_items (cart_id, sku, quantity, price_cents, line_no) VALUES ('cart_none', 'SKU-MUG', 1, 1, 0)"
                .to_string(),
        ] {
            assert!(raw.execute(&bad).await.is_err(), "refused: {bad}");
        }
        for good in [
            format!("UPDATE carts SET status = 'COMPLETED' WHERE id = '{open}'"),
            format!("UPDATE checkout_attempts SET state = 'FAILED' WHERE id = '{}'", attempts[0].id),
        ] {
            assert_eq!(raw.execute(&good).await.expect("allowed"), 1, "{good}");
        }
        assert_eq!(raw.dump().await[0].len(), 4, "refused writes changed nothing");

        // And the store goes on working on the rebuilt tables.
        let again = store.begin_attempt(&failed, &buyer(), &AttemptId::generate(), &lease("me", 30), now_ms()).await;
        assert!(matches!(again.expect("begin"), Begin::Started(..)));
    }
);

/// A call dropped while its connection waits for the answer to `BEGIN` (the request
/// went away, or a timeout ran out) must not leave that connection inside the
/// transaction: the next call on it, here the single statement that records
/// `CHARGING` before a card is charged, would then stay uncommitted while the caller
/// goes on to charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_beginning_a_transaction_leaves_nothing_open_for_the_next() {
    use sqlx::Connection as _;
    if !postgres_available().await {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    migrated(&db).await.close().await;
    let mut url = reqwest::Url::parse(&db.url).expect("url");
    let target = (url.host_str().expect("host"), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(target)
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let proxy = HoldingProxy::start(target).await;
    url.set_port(Some(proxy.port)).expect("port");
    let store = Store::connect_lazy(&DbSettings {
        url: DatabaseUrl::parse(url.as_str()).expect("url"),
        pool_max: 1,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
    })
    .expect("store");

    let (first, second) = (
        cart_with_a_mug(&store, "usr_1").await,
        cart_with_a_mug(&store, "usr_1").await,
    );
    let attempt = AttemptId::generate();
    let begun = store
        .begin_attempt(&first, &buyer(), &attempt, &lease("me", 30), now_ms())
        .await;
    assert!(matches!(begun.expect("begin"), Begin::Started(..)));

    // The only connection sends BEGIN for the second cart's attempt; its answer is
    // held back, and the call is dropped while it waits. (The pool first checks the
    // connection the last call gave back, with a round trip of its own.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.pool_snapshot().idle < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection never went back to the pool"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.hold(true);
    let (user, other_attempt, other_lease) = (buyer(), AttemptId::generate(), lease("other", 30));
    let dropped = store.begin_attempt(&second, &user, &other_attempt, &other_lease, now_ms());
    assert!(tokio::time::timeout(Duration::from_millis(300), dropped).await.is_err());
    proxy.hold(false);

    assert!(store.mark_charging(&attempt, "me", now_ms()).await.expect("mark"));
    let mut direct = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let state: String = sqlx::query_scalar("SELECT state FROM checkout_attempts WHERE id = $1")
        .bind(attempt.as_str())
        .fetch_one(&mut direct)
        .await
        .expect("state");
    assert_eq!(
        state, "CHARGING",
        "the mark the caller was told is recorded is committed"
    );
    let second_cart: String = sqlx::query_scalar("SELECT status FROM carts WHERE id = $1")
        .bind(second.as_str())
        .fetch_one(&mut direct)
        .await
        .expect("cart");
    assert_eq!(second_cart, "OPEN", "nothing of the dropped call took effect");
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut direct)
    .await
    .expect("sessions");
    assert_eq!(open, 0, "no session is left inside a transaction");
    store.close().await;
}
