-- Wake whoever follows an order live (GET /api/v1/orders/{id}/events) when a timeline entry of
-- it commits: NOTIFY is delivered at commit, never for a rolled-back step. The payload is only
-- the order id; a listener reads the new entries itself (order.store.timeline_after). A row
-- trigger, since a transition's CTE inserts no row when another step won the race.
CREATE OR REPLACE FUNCTION order_timeline_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_timeline', NEW.order_id::text);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS order_timeline_notify ON order_timeline;
CREATE TRIGGER order_timeline_notify AFTER INSERT ON order_timeline
    FOR EACH ROW EXECUTE FUNCTION order_timeline_notify();
