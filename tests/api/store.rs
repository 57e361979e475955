//! The store's guarantees, run against both databases: the compare-and-set steps
//! that keep two actors from moving one checkout attempt.

use checkout_service::catalog::Catalog;
use checkout_service::clock::now_ms;
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
        assert!(!store.complete_attempt(&attempt, "someone", &order, "txn_1", now_ms()).await.expect("complete"));
        assert!(store.order(&order).await.expect("order").is_none());
        let failure = Failure { reason: "TEST", inventory_pending: None, recheck_until_ms: None };
        assert!(!store.fail_attempt(&attempt, "someone", &failure, now_ms()).await.expect("fail"));
        assert!(store.complete_attempt(&attempt, "me", &order, "txn_1", now_ms()).await.expect("complete"));
        assert!(!store.complete_attempt(&attempt, "me", &order, "txn_1", now_ms()).await.expect("complete"), "once");
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
                assert!(store.complete_attempt(&attempt, "me", &order, &format!("txn_{n}"), now_ms()).await.expect("complete"));
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
