-- The outbox no longer NOTIFYs: the unit of work that wrote events wakes its process's relay
-- once it has committed (sagakit.units), and a relay's sweep takes anything else. A NOTIFY takes
-- a database-wide lock at commit and cost ~70 µs of server CPU per transaction here.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
