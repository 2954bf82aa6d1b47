-- Wake the webhook senders only when a delivery was written. The trigger of 007 was a statement
-- trigger, and a statement trigger fires for an INSERT of no rows too: every saga step's
-- statement (its webhook CTE inserts a row only for an order with a callback URL) sent a
-- NOTIFY, each taking PostgreSQL's server-wide notify lock at commit. A row trigger fires only
-- for a row; the identical notifications of one transaction are folded into one.
DROP TRIGGER IF EXISTS webhook_deliveries_notify ON webhook_deliveries;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION webhook_deliveries_notify();
