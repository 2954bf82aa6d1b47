-- Fault switches (sagakit.faults) of a PostgreSQL-backed service: the one current setting, and
-- every change to it. Every replica reads the same row, so an operator's switch applies to all.
CREATE TABLE IF NOT EXISTS fault_switches (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- exactly one row
    value      jsonb       NOT NULL DEFAULT '{}',
    changed_by text,
    request_id text,
    changed_at timestamptz
);

-- The audit trail: who changed what, when, from which value to which. Append-only: the
-- trigger below refuses to rewrite or delete history, even for the service's own role.
CREATE TABLE IF NOT EXISTS fault_changes (
    seq        bigserial   PRIMARY KEY,
    old        jsonb       NOT NULL,
    new        jsonb       NOT NULL,
    changed_by text        NOT NULL,
    request_id text,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION fault_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fault_changes is append-only';
END $$;

DROP TRIGGER IF EXISTS fault_changes_append_only ON fault_changes;
CREATE TRIGGER fault_changes_append_only BEFORE UPDATE OR DELETE ON fault_changes
    FOR EACH ROW EXECUTE FUNCTION fault_changes_append_only();
