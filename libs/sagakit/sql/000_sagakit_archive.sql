-- The event archive (sagakit.archive): every event this service published or consumed, kept
-- append-only for the retention period. Written by the outbox relay (published) and next to
-- the inbox record (consumed), in their transactions.
CREATE TABLE IF NOT EXISTS event_archive (
    seq         bigserial   PRIMARY KEY,
    direction   text        NOT NULL CHECK (direction IN ('published', 'consumed')),
    publisher   text        NOT NULL,           -- the CloudEvents source
    consumer    text,                           -- this service, for a consumed event
    event_id    uuid        NOT NULL,
    event_type  text        NOT NULL,
    subject     text        NOT NULL,           -- the order id
    headers     jsonb       NOT NULL,
    body        bytea,                          -- NULL: withheld (personal data)
    at          timestamptz NOT NULL DEFAULT now()
);
-- Once per publisher and once per consumer: a second write of the same side is refused.
CREATE UNIQUE INDEX IF NOT EXISTS event_archive_once
    ON event_archive (event_id, direction, coalesce(consumer, ''));
CREATE INDEX IF NOT EXISTS event_archive_subject ON event_archive (subject, at);
CREATE INDEX IF NOT EXISTS event_archive_at ON event_archive (at);

-- Append-only: no update ever; a delete only of rows older than the retention, and only by
-- prune_event_archive (which sets the transaction-local flag this trigger checks).
CREATE OR REPLACE FUNCTION event_archive_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('sagakit.pruning_archive', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'event_archive is append-only (% refused)', TG_OP;
END $$;

DROP TRIGGER IF EXISTS event_archive_append_only ON event_archive;
CREATE TRIGGER event_archive_append_only BEFORE UPDATE OR DELETE ON event_archive
    FOR EACH ROW EXECUTE FUNCTION event_archive_append_only();

CREATE OR REPLACE FUNCTION prune_event_archive(retention_days integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint;
BEGIN
    PERFORM set_config('sagakit.pruning_archive', 'on', true);
    DELETE FROM event_archive WHERE at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('sagakit.pruning_archive', 'off', true);
    RETURN removed;
END $$;
