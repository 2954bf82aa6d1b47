-- Every order has an owner: the `sub` of the token that placed it (a customer's id, or the id
-- of the machine or operator client that placed it for the customer it names). A caller without
-- the ops scope sees only the orders it owns. Orders from before identity existed have none and
-- are seen by operators only.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS owner text;
CREATE INDEX IF NOT EXISTS orders_owner_created_idx ON orders (owner, created_at DESC);
