-- The operator audit (sagakit.audit): who did what, when, under which request id, the outcome.
CREATE TABLE IF NOT EXISTS operator_audit (
    seq         bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL,
    service     text        NOT NULL,
    actor       text        NOT NULL,
    actor_kind  text        NOT NULL,
    action      text        NOT NULL,
    target      text,
    request_id  text,
    outcome     text        NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS operator_audit_action ON operator_audit (action, seq);

-- Append-only: a record is never changed or removed.
CREATE OR REPLACE FUNCTION operator_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_audit is append-only (% refused)', TG_OP;
END $$;

DROP TRIGGER IF EXISTS operator_audit_append_only ON operator_audit;
CREATE TRIGGER operator_audit_append_only BEFORE UPDATE OR DELETE ON operator_audit
    FOR EACH ROW EXECUTE FUNCTION operator_audit_append_only();
