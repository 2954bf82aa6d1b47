-- (Named 000_ so that it runs right after 000_outbox_inbox.sql, which it amends, and before any
-- service's own files.)
-- Wake the relay only when a transaction really wrote an event. A statement trigger fires even
-- for an INSERT of no rows, as in a transition's data-modifying CTE that announces nothing;
-- a row trigger fires per event, and PostgreSQL folds identical notifications of one
-- transaction into one, so a transaction still wakes the relay once.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();
