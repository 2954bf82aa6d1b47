-- Optimistic concurrency: every change to an order bumps its version, and a saga step applies
-- only to the version it was decided on (see order.store.transition).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS version integer NOT NULL DEFAULT 0;

-- Every UPDATE bumps it, by this trigger rather than in each statement: the service's own
-- writes, and any other writer too (a replica of the previous release during a rolling
-- upgrade, which still locks rows instead, or an operator's hand-written UPDATE), so no step
-- decided on an older state of the order can apply on top of another change.
CREATE OR REPLACE FUNCTION orders_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS orders_bump_version ON orders;
CREATE TRIGGER orders_bump_version BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_bump_version();
