-- Owners (the `sub` of the token that acted): a card belongs to whoever tokenized it and pays
-- only for that owner's orders; an order's charge carries the order's owner, and the ledger of
-- an order is shown to that owner (and operators) only. Rows from before identity have none.
ALTER TABLE cards ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS owner text;
