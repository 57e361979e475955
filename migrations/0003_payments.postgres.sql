-- Version 3, PostgreSQL: what a real payment provider needs. See
-- 0003_payments.sqlite.sql.

ALTER TABLE orders ALTER COLUMN transaction_id DROP NOT NULL;

ALTER TABLE checkout_attempts ADD COLUMN payment_ref TEXT;
ALTER TABLE checkout_attempts ADD COLUMN action_until_ms BIGINT;

CREATE TABLE webhook_events (
    id             TEXT PRIMARY KEY,
    type           TEXT NOT NULL,
    payment_ref    TEXT,
    received_at_ms BIGINT NOT NULL
);
