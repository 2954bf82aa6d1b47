-- Customers whose erasure was asked for. An access token issued before the erasure stays valid
-- until it expires; the order insert (order.store._place) refuses a new order from an owner
-- listed here, so such a token cannot put the customer's name back. A row holds the account's
-- id only (a pseudonym that names nobody once identity has erased the account), so it is kept;
-- and the erasure that closed it, under which an order that slipped in as the account closed
-- is erased too (order.customer_data.erase_pending looks at accounts closed lately only).
CREATE TABLE IF NOT EXISTS closed_accounts (
    customer_id text        PRIMARY KEY,
    erasure_id  uuid        NOT NULL,
    closed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS closed_accounts_closed_at_idx ON closed_accounts (closed_at);
