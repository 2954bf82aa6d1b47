-- The outbox no longer NOTIFYs: the unit of work that wrote events wakes its process's relay
-- once it has committed (sagakit.units), and a relay's sweep takes anything else. A NOTIFY takes
-- a lock shared by the whole server at commit and cost 70-120 µs of CPU per transaction here.
-- (During a rolling upgrade, a replica of the release before, which still waits for the NOTIFY,
-- publishes on its sweep, within a second, until it is replaced.)
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
