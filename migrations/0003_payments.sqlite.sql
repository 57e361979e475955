-- Version 3, SQLite: what a real payment provider needs.
--   orders.transaction_id may be NULL: an order whose total is 0 is confirmed
--   without a charge. SQLite drops a NOT NULL only by rebuilding the table (with
--   foreign key enforcement off, so outside the migrator's transaction, in one of
--   its own); every row is copied as it is.
--   checkout_attempts.payment_ref: the provider's own ID of the payment (a Stripe
--   PaymentIntent), recorded before the payment is confirmed.
--   checkout_attempts.action_until_ms: until when a payment may wait for the buyer
--   (3-D Secure) before it is cancelled.
--   webhook_events: the provider's events applied, each once.

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE orders_rebuilt (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    cart_id        TEXT NOT NULL UNIQUE REFERENCES carts (id),
    attempt_id     TEXT NOT NULL UNIQUE REFERENCES checkout_attempts (id),
    status         TEXT NOT NULL CHECK (status = 'CONFIRMED'),
    transaction_id TEXT UNIQUE,
    total_cents    BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);
INSERT INTO orders_rebuilt (id, user_id, cart_id, attempt_id, status, transaction_id, total_cents, currency,
        created_at_ms)
    SELECT id, user_id, cart_id, attempt_id, status, transaction_id, total_cents, currency, created_at_ms
    FROM orders;
DROP TABLE orders;
ALTER TABLE orders_rebuilt RENAME TO orders;

ALTER TABLE checkout_attempts ADD COLUMN payment_ref TEXT;
ALTER TABLE checkout_attempts ADD COLUMN action_until_ms BIGINT;

CREATE TABLE webhook_events (
    id             TEXT PRIMARY KEY,
    type           TEXT NOT NULL,
    payment_ref    TEXT,
    received_at_ms BIGINT NOT NULL
);

COMMIT;
PRAGMA foreign_keys = ON;
