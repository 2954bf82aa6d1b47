-- Customers whose erasure was asked for (payment.customer_data.erase). An access token issued
-- before the erasure stays valid until it expires; a card tokenized with it would bring the
-- holder's name back, so payment.store.insert_card refuses one from an owner listed here. A row
-- holds the account's id only (a pseudonym that names nobody once identity has erased the
-- account), so it is kept.
CREATE TABLE IF NOT EXISTS closed_accounts (
    customer_id text        PRIMARY KEY,
    closed_at   timestamptz NOT NULL DEFAULT now()
);
