-- A customer's data (identity.customer_data): exports being assembled from every service's part,
-- and erasures being confirmed by every service.
CREATE TABLE IF NOT EXISTS data_exports (
    id           uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL,
    requested_by text        NOT NULL,        -- the token subject that asked
    parts        jsonb       NOT NULL DEFAULT '{}',  -- service -> its part (personal data)
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX IF NOT EXISTS data_exports_customer ON data_exports (customer_id, created_at DESC);

CREATE TABLE IF NOT EXISTS erasures (
    id           uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL UNIQUE,  -- once per customer: asking again is the same one
    requested_by text        NOT NULL,
    parts        jsonb       NOT NULL DEFAULT '{}',  -- service -> what it anonymised (counts)
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

ALTER TABLE customers ADD COLUMN IF NOT EXISTS erased_at timestamptz;
