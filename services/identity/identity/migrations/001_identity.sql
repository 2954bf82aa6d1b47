-- The identity service's own data. No other service reads this database.

-- Customers log in with their email (case-insensitive, unique) and a password, stored only as
-- an Argon2id hash (its parameters inside the hash string, so they can be raised later).
CREATE TABLE IF NOT EXISTS customers (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS customers_email ON customers (lower(email));

-- Operators and machine clients (OAuth 2.0 client credentials): their secret hashed the same way,
-- the scopes a token of theirs may carry.
CREATE TABLE IF NOT EXISTS clients (
    client_id   text        PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('operator', 'machine')),
    description text        NOT NULL,
    secret_hash text        NOT NULL,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
