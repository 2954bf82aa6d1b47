-- The transactional outbox and the idempotent inbox every PostgreSQL-backed service uses.
CREATE TABLE IF NOT EXISTS outbox (
    seq         bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    event_type  text        NOT NULL,
    subject     text        NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- History: dropped by 001_outbox_no_notify.sql. The unit of work that wrote an event now wakes
-- its process's relay after its commit (sagakit/units.py): a NOTIFY cost every commit a
-- server-wide lock (docs/performance.md, round five). Kept as it ran, as migrations are.
-- Wake the relay as soon as a transaction that wrote an event commits (NOTIFY is transactional).
-- A row trigger, not a statement trigger: a statement trigger fires even for an INSERT of no
-- rows, as in a transition's data-modifying CTE that announces nothing. PostgreSQL folds the
-- identical notifications of one transaction into one, so a transaction wakes the relay once.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();

CREATE TABLE IF NOT EXISTS inbox (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
