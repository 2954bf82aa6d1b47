-- Webhooks (order.webhooks): an order may name a callback URL that is told of each status.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS callback_url text;

-- One row per (timeline entry x callback): written in the statement that writes the entry
-- (order.store), so a status and the promise to announce it commit together, and the saga
-- never waits for a customer's server. The sender (order.webhooks) claims due rows with
-- FOR UPDATE SKIP LOCKED, so each replica's sender takes different ones.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              uuid        PRIMARY KEY,  -- the webhook-id: the same on every retry
    order_id        uuid        NOT NULL REFERENCES orders (id),
    timeline_seq    bigint      NOT NULL REFERENCES order_timeline (seq),
    url             text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_order_idx
    ON webhook_deliveries (order_id, timeline_seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_parked_idx
    ON webhook_deliveries (created_at) WHERE state = 'parked';

-- Each owner's signing secret (Standard Webhooks, "whsec_" + base64), made on first use.
CREATE TABLE IF NOT EXISTS webhook_secrets (
    owner      text        PRIMARY KEY,
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Wake the senders when a delivery is due now (a sweep covers a missed notification).
CREATE OR REPLACE FUNCTION webhook_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_deliveries', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS webhook_deliveries_notify ON webhook_deliveries;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_notify();
