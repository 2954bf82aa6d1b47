-- Optimistic concurrency: every change to an order bumps its version, and a change applies only
-- to the version it was decided on (see order.store.transition).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS version integer NOT NULL DEFAULT 0;
