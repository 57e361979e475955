-- SQLite only (PostgreSQL's version 2 changes nothing): the CHECK constraints on
-- carts.status and checkout_attempts.state, written as comparisons instead of IN
-- lists. SQLite checks an IN list of three values or more by building a temporary
-- B-tree of the values each time a statement runs, and every checkout writes five
-- rows that these constraints check. The constraints accept exactly the same
-- values as before.
--
-- SQLite changes a table's constraints only by rebuilding the table, which needs
-- foreign key enforcement off (other tables reference both) and so runs outside
-- the migrator's transaction, in one of its own. Every row is copied as it is;
-- each index is created again as it was. Run again (if the process stopped
-- between the commit and the migrator's record of it), it rebuilds the same
-- tables again.

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE carts_rebuilt (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status = 'OPEN' OR status = 'CHECKING_OUT' OR status = 'COMPLETED'),
    currency      TEXT NOT NULL,
    order_id      TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
INSERT INTO carts_rebuilt (id, user_id, status, currency, order_id, created_at_ms, updated_at_ms)
    SELECT id, user_id, status, currency, order_id, created_at_ms, updated_at_ms FROM carts;
DROP TABLE carts;
ALTER TABLE carts_rebuilt RENAME TO carts;

CREATE INDEX carts_by_status ON carts (status) WHERE status = 'CHECKING_OUT';

CREATE TABLE checkout_attempts_rebuilt (
    id                TEXT PRIMARY KEY,
    cart_id           TEXT NOT NULL REFERENCES carts (id),
    user_id           TEXT NOT NULL,
    state             TEXT NOT NULL
                      CHECK (state = 'RESERVING' OR state = 'CHARGING' OR state = 'COMPLETED' OR state = 'FAILED'),
    amount_cents      BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    transaction_id    TEXT,
    order_id          TEXT,
    failure           TEXT,
    inventory_pending TEXT CHECK (inventory_pending IN ('COMMIT', 'RELEASE')),
    recheck_until_ms  BIGINT,
    lease_owner       TEXT,
    lease_until_ms    BIGINT NOT NULL,
    retries           BIGINT NOT NULL DEFAULT 0,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL
);
INSERT INTO checkout_attempts_rebuilt (id, cart_id, user_id, state, amount_cents, currency, transaction_id,
        order_id, failure, inventory_pending, recheck_until_ms, lease_owner, lease_until_ms, retries,
        created_at_ms, updated_at_ms)
    SELECT id, cart_id, user_id, state, amount_cents, currency, transaction_id,
        order_id, failure, inventory_pending, recheck_until_ms, lease_owner, lease_until_ms, retries,
        created_at_ms, updated_at_ms
    FROM checkout_attempts;
DROP TABLE checkout_attempts;
ALTER TABLE checkout_attempts_rebuilt RENAME TO checkout_attempts;

CREATE UNIQUE INDEX checkout_attempts_one_active_per_cart
    ON checkout_attempts (cart_id) WHERE state IN ('RESERVING', 'CHARGING');

CREATE INDEX checkout_attempts_open_work
    ON checkout_attempts (lease_until_ms)
    WHERE state IN ('RESERVING', 'CHARGING') OR inventory_pending IS NOT NULL OR recheck_until_ms IS NOT NULL;

COMMIT;
PRAGMA foreign_keys = ON;
