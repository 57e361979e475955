-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are Unix milliseconds; money is integer cents.

CREATE TABLE products (
    sku           TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    price_cents   BIGINT NOT NULL CHECK (price_cents >= 0),
    currency      TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE carts (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('OPEN', 'CHECKING_OUT', 'COMPLETED')),
    currency      TEXT NOT NULL,
    order_id      TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE INDEX carts_by_status ON carts (status) WHERE status = 'CHECKING_OUT';

CREATE TABLE cart_items (
    cart_id     TEXT NOT NULL REFERENCES carts (id),
    sku         TEXT NOT NULL REFERENCES products (sku),
    quantity    BIGINT NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    price_cents BIGINT NOT NULL,
    line_no     BIGINT NOT NULL,
    PRIMARY KEY (cart_id, sku)
);

-- One row per try at checking a cart out. The lease (owner, until) says who may act
-- on it and when someone else may take over; the reconciler sweeps rows whose lease
-- has run out and that still have work: an unfinished checkout, an inventory call
-- still owed, or a window in which a late charge must be looked for.
CREATE TABLE checkout_attempts (
    id                TEXT PRIMARY KEY,
    cart_id           TEXT NOT NULL REFERENCES carts (id),
    user_id           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('RESERVING', 'CHARGING', 'COMPLETED', 'FAILED')),
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

CREATE UNIQUE INDEX checkout_attempts_one_active_per_cart
    ON checkout_attempts (cart_id) WHERE state IN ('RESERVING', 'CHARGING');

CREATE INDEX checkout_attempts_open_work
    ON checkout_attempts (lease_until_ms)
    WHERE state IN ('RESERVING', 'CHARGING') OR inventory_pending IS NOT NULL OR recheck_until_ms IS NOT NULL;

CREATE TABLE orders (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    cart_id        TEXT NOT NULL UNIQUE REFERENCES carts (id),
    attempt_id     TEXT NOT NULL UNIQUE REFERENCES checkout_attempts (id),
    status         TEXT NOT NULL CHECK (status IN ('CONFIRMED')),
    transaction_id TEXT NOT NULL UNIQUE,
    total_cents    BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);

CREATE TABLE order_items (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    sku         TEXT NOT NULL,
    quantity    BIGINT NOT NULL,
    price_cents BIGINT NOT NULL,
    line_no     BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
);

-- Responses kept for `Idempotency-Key` replays, per user.
CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status BIGINT,
    response_body   TEXT,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_ms);
