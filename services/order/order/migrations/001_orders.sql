-- The order service's own data. No other service reads this database.
CREATE TABLE IF NOT EXISTS products (
    sku         text          PRIMARY KEY,
    name        text          NOT NULL,
    description text          NOT NULL DEFAULT '',
    price       numeric(12,2) NOT NULL CHECK (price > 0)
);

CREATE TABLE IF NOT EXISTS orders (
    id                  uuid          PRIMARY KEY,
    status              text          NOT NULL,
    customer_name       text          NOT NULL,
    customer_email      text          NOT NULL,
    payment_token       text          NOT NULL,
    currency            text          NOT NULL,
    total               numeric(12,2) NOT NULL,
    lines               jsonb         NOT NULL,
    cancellation_reason text,
    trace_id            text          NOT NULL,
    created_at          timestamptz   NOT NULL DEFAULT now(),
    updated_at          timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status);
CREATE INDEX IF NOT EXISTS orders_created_at_idx ON orders (created_at DESC);

-- Every status an order passed through, with what moved it there.
CREATE TABLE IF NOT EXISTS order_timeline (
    seq       bigserial   PRIMARY KEY,
    order_id  uuid        NOT NULL REFERENCES orders (id),
    status    text        NOT NULL,
    reason    text,
    event_id  uuid,
    trace_id  text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS order_timeline_order_idx ON order_timeline (order_id, seq);

-- A retried POST with the same Idempotency-Key returns the order the first one created.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash text        NOT NULL,
    order_id     uuid        NOT NULL REFERENCES orders (id),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Card tokens the payment service announced (payment.card_tokenized): a local read model, so
-- the order API can reject an unknown token at once without calling payment over HTTP.
CREATE TABLE IF NOT EXISTS payment_tokens (
    token      text        PRIMARY KEY,
    brand      text        NOT NULL,
    last4      text        NOT NULL,
    created_at timestamptz NOT NULL
);
