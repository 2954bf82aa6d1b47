-- Customers whose erasure was asked for. An access token issued before the erasure stays valid
-- until it expires; the order insert (order.store._place) refuses a new order from an owner
-- listed here, so such a token cannot put the customer's name back. A row holds the account's
-- id only (a pseudonym that names nobody once identity has erased the account), so it is kept.
CREATE TABLE IF NOT EXISTS closed_accounts (
    customer_id text        PRIMARY KEY,
    closed_at   timestamptz NOT NULL DEFAULT now()
);
