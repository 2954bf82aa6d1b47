-- The payment service's own data. No other service reads this database.

-- Tokenized cards: never the number or the cvc. decline_reason is the simulated issuer's answer
-- to every charge on the card, decided once from the number when it was tokenized.
CREATE TABLE IF NOT EXISTS cards (
    token          text        PRIMARY KEY,
    brand          text        NOT NULL,
    last4          text        NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month      smallint    NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year       smallint    NOT NULL,
    holder         text        NOT NULL,
    decline_reason text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The ledger, append-only: a refund is a row of its own that points at the charge it reverses
-- (which keeps its status 'approved').
CREATE TABLE IF NOT EXISTS payments (
    id            uuid          PRIMARY KEY,
    order_id      uuid          NOT NULL,
    kind          text          NOT NULL CHECK (kind IN ('charge', 'refund')),
    status        text          NOT NULL CHECK (status IN ('approved', 'declined', 'refunded')),
    amount        numeric(12,2) NOT NULL CHECK (amount > 0),
    currency      text          NOT NULL,
    reason        text,
    refund_of     uuid          REFERENCES payments (id),
    payment_token text          NOT NULL,
    created_at    timestamptz   NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT payments_kind_status CHECK (
        (kind = 'charge' AND status IN ('approved', 'declined') AND refund_of IS NULL)
        OR (kind = 'refund' AND status = 'refunded' AND refund_of IS NOT NULL)
    )
);
-- Exactly one charge per order, at most one refund per charge, whatever the replicas race.
CREATE UNIQUE INDEX IF NOT EXISTS payments_one_charge_per_order
    ON payments (order_id) WHERE kind = 'charge';
CREATE UNIQUE INDEX IF NOT EXISTS payments_one_refund_per_charge
    ON payments (refund_of) WHERE kind = 'refund';
CREATE INDEX IF NOT EXISTS payments_order_idx ON payments (order_id, created_at);

-- Orders we were told are cancelled: an order.created that arrives after its order.cancelled
-- must not charge (the void was announced already).
CREATE TABLE IF NOT EXISTS order_cancellations (
    order_id uuid        PRIMARY KEY,
    reason   text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
