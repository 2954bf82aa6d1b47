-- The webhook senders are woken by the unit of work that wrote a delivery, in its own process
-- (sagakit.units, as the outbox relays are since round five of docs/performance.md), and by
-- their sweep: no NOTIFY, no listening connection per replica.
DROP TRIGGER IF EXISTS webhook_deliveries_notify ON webhook_deliveries;
DROP FUNCTION IF EXISTS webhook_deliveries_notify();
